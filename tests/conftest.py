"""Shared pytest fixtures."""
import sys

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine: one thread is several times faster (opt in per module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _empty_png(log_jsonl, png):
    open(png, 'wb').close()
    return True


@pytest.fixture(autouse=True)
def no_loss_plot_in_process(monkeypatch):
    """train.py redraws loss.png at every evaluation (matplotlib: seconds a call, dozens of in-process runs in this
    suite). In-process runs write an empty loss.png instead; plots.plot_loss itself is
    tested in test_evaluate.py, and train.py's real loss.png by the CLI test (a subprocess, not patched)."""
    train = sys.modules.get('train')
    if train is not None:
        monkeypatch.setattr(train, 'plot_loss', _empty_png)
