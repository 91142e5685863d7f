"""Shared pytest fixtures, and the thread budget of pytest-xdist workers."""
import os
import sys

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (`-n N`, the README's test command) each worker gets its share of the cores, for torch here
    and, through OMP_NUM_THREADS, for the subprocesses the tests start: N workers with every core each would fight."""
    workers = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
        share = max(1, cores // int(workers))
        os.environ['OMP_NUM_THREADS'] = str(share)
        torch.set_num_threads(share)


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
