"""Execute every teaching notebook in notebooks/ top to bottom, headless, and fail on any error.

Each notebook runs with its own folder as the working directory (the notebooks import the project modules
through sys.path.insert(0, '..') and find ../../shared/data when it exists), with MPLBACKEND=Agg and
OMP_NUM_THREADS=1 (small tensors on a shared machine). Needs nbformat, nbclient and ipykernel
(requirements-test.txt); skipped otherwise.
"""
import glob
import os
import time

import pytest

nbformat = pytest.importorskip('nbformat', reason='nbformat is not installed (pip install -r requirements-test.txt)')
nbclient = pytest.importorskip('nbclient', reason='nbclient is not installed (pip install -r requirements-test.txt)')
pytest.importorskip('ipykernel', reason='ipykernel is not installed (pip install -r requirements-test.txt)')

NB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'notebooks')
NOTEBOOKS = sorted(glob.glob(os.path.join(NB_DIR, '*.ipynb')))
CELL_TIMEOUT = 120  # seconds per cell
EXPECTED = {'frequency_snr.ipynb', 'dream.ipynb', 'relay.ipynb'}


def test_notebooks_present():
    assert EXPECTED <= {os.path.basename(p) for p in NOTEBOOKS}, f'missing notebooks in {NB_DIR}'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv('MPLBACKEND', 'Agg')  # the kernel inherits the environment
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name='python3', allow_errors=False,
                                     resources={'metadata': {'path': os.path.dirname(path)}})
    t = time.time()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # names the cell and shows its traceback
        pytest.fail(f'{os.path.basename(path)}: a cell failed:\n{e}', pytrace=False)
    print(f'{os.path.basename(path)}: {time.time() - t:.1f} s')
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors, f'{os.path.basename(path)}: error outputs {[e["ename"] for e in errors]}'
