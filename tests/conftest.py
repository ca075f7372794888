"""Tests run torch on one thread: their batches are small, and on a shared machine a second OpenMP
thread waiting for a busy core makes small ops 20-100x slower (measured here)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
