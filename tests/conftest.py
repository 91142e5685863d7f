"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine: one thread is several times faster (opt in per module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
