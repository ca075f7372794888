"""The spec library: one .gn file per published method, shipped with graphnet."""
