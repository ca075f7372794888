"""The user's own test of ops.py: graphnet's verification of each op, importable for any pytest."""
from pathlib import Path

import pytest

from graphnet.compiler.verify import check_op
from graphnet.registry import load_file

OPS = {op.name: op for op in load_file(Path(__file__).with_name("ops.py"))}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_its_reference_and_counts(name):
    check_op(OPS[name])
