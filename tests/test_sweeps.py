"""experiments/sweep.py --sweep snapshots|steps on two tiny trained runs (standard, DREAM): CSV, PNG, JSON line, errors."""
import csv
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import data  # noqa: E402
import sweep as sweeps  # noqa: E402
import train  # noqa: E402
from test_train import smooth_faces  # noqa: E402

TINY = ['--model', 'tiny', '--batch-size', '2', '--max-iters', '4', '--snapshot-every', '2', '--timesteps', '100',
        '--beta-end', '0.1', '--eval-steps', '2', '--eval-n', '2', '--log-every', '2']
COLUMNS = ['run', 'label', 'seed', 'sample_seed', 'ckpt', 'step', 'train_s', 'task', 'sampler', 'steps', 'temperature',
           'n', 'psnr', 'ssim', 'consistency', 'flat_noise', 'grid_texture', 'bicubic_psnr', 'bicubic_ssim',
           'bicubic_consistency', 'bicubic_flat_noise', 'bicubic_grid_texture', 'input_psnr', 'input_ssim', 'wall_s']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    smooth_faces(root / 'src', 8)
    data.prepare(str(root / 'src'), str(root / 'pairs'), lr=8, hr=32, val=3, progress=False)
    for name, extra in (('std', []), ('dream', ['--dream'])):
        train.main(['--task', 'sr8_32', '--data', str(root / 'pairs'), '--out', str(root / name)] + TINY + extra)
    return root


def sweep(argv, capsys):
    rc = sweeps.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def check_outputs(out, prefix, n_rows):
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # --json: exactly one line on stdout
    summary = json.loads(lines[0])
    assert summary['rows'] == n_rows and summary['csv'] == prefix + '.csv' and summary['png'] == prefix + '.png'
    with open(prefix + '.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and len(rows) == n_rows
    assert os.path.getsize(prefix + '.png') > 1000
    assert all(float(r['psnr']) > 0 and -1 <= float(r['ssim']) <= 1 and r['n'] == '2' and float(r['wall_s']) > 0
               for r in rows)
    return summary, rows


def test_snapshot_sweep(runs, capsys):
    prefix = str(runs / 'res' / 'snap')
    rc, out, err = sweep(['--sweep', 'snapshots', '--runs', str(runs / 'std'), str(runs / 'dream'), '--labels',
                          'standard', 'DREAM', '--data', str(runs / 'pairs'), '--n', '2', '--steps', '3',
                          '--sampler', 'ddim', '--out', prefix, '--json', '--dtype', 'fp32'], capsys)
    assert rc == 0, err
    summary, rows = check_outputs(out, prefix, 2 * 2)  # 2 runs x snapshots at 2 and 4 (ckpt.pt = step 4: not twice)
    assert [(r['label'], r['ckpt'], r['step']) for r in rows] == [
        ('standard', 'ckpt_0000002.pt', '2'), ('standard', 'ckpt_0000004.pt', '4'),
        ('DREAM', 'ckpt_0000002.pt', '2'), ('DREAM', 'ckpt_0000004.pt', '4')]
    assert all(float(r['train_s']) > 0 and r['sampler'] == 'ddim' and r['steps'] == '3' for r in rows)
    assert set(summary['best']) == {'standard', 'DREAM'} and summary['sweep'] == 'snapshots'
    assert 'fp32' in err  # the chosen dtype is reported (on stderr with --json)


def test_steps_sweep_same_seed_reproduces(runs, capsys):
    prefix = str(runs / 'steps')
    argv = ['--sweep', 'steps', '--runs', str(runs / 'std'), str(runs / 'dream'), '--data', str(runs / 'pairs'),
            '--n', '2', '--batch-size', '1', '--steps', '1', '3', '--sampler', 'ddpm', 'ddim', '--out', prefix]
    rc, out, err = sweep(argv + ['--json'], capsys)
    assert rc == 0, err
    summary, rows = check_outputs(out, prefix, 2 * 2 * 2)  # runs x samplers x steps
    assert {(r['label'], r['sampler'], r['steps']) for r in rows} == \
        {(l, s, n) for l in ('std', 'dream') for s in ('ddpm', 'ddim') for n in ('1', '3')}
    assert all(r['ckpt'] == 'ckpt.pt' and r['step'] == '4' for r in rows)
    assert all(float(r['bicubic_psnr']) > 0 for r in rows)
    assert summary['best']['std']['steps'] in (1, 3)
    rc, table, _ = sweep(argv + ['--ckpt-name', 'ckpt_0000002.pt', '--batch-size', '2'], capsys)  # table output
    assert rc == 0 and 'ckpt_0000002.pt' in table and 'n = 2 held-out' in table
    with open(prefix + '.csv') as f:
        again = list(csv.DictReader(f))
    assert len(again) == 8 and all(r['step'] == '2' for r in again)


def test_sweep_is_deterministic(runs, capsys):
    argv = ['--sweep', 'steps', '--runs', str(runs / 'std'), '--data', str(runs / 'pairs'), '--n', '2',
            '--steps', '2', '--json', '--out', str(runs / 'det')]
    res = [json.loads(sweep(argv, capsys)[1])['best']['std']['psnr'] for _ in range(2)]
    assert res[0] == res[1]


def test_relay_stage2_and_stage1(runs, capsys):
    for task in ('relay8_32', 'relay8'):
        train.main(['--task', task, '--data', str(runs / 'src'), '--holdout', '2', '--out', str(runs / task)] + TINY)
    capsys.readouterr()
    prefix = str(runs / 'relay')
    rc, out, err = sweep(['--sweep', 'steps', '--runs', str(runs / 'relay8_32'), '--data', str(runs / 'src'),
                          '--n', '2', '--steps', '2', '3', '--sampler', 'ddpm', 'ddim', '--out', prefix, '--json'], capsys)
    assert rc == 0, err
    _, rows = check_outputs(out, prefix, 2)  # one sampler (relay's own) x 2 steps
    assert all(r['sampler'] == 'relay' and r['consistency'] == '' for r in rows)
    rc, out, err = sweep(['--sweep', 'snapshots', '--runs', str(runs / 'relay8'), '--data', str(runs / 'src'),
                          '--n', '2', '--steps', '2'], capsys)
    assert rc == 2 and 'relay stage 1' in err and err.count('\n') == 1


def test_errors_are_one_line(runs, tmp_path, capsys):
    os.makedirs(tmp_path / 'empty')
    base = ['--data', str(runs / 'pairs'), '--n', '2', '--steps', '2', '--out', str(tmp_path / 'x')]
    cases = [(['--sweep', 'snapshots', '--runs', str(tmp_path / 'empty')], 'no checkpoints'),
             (['--sweep', 'steps', '--runs', str(tmp_path / 'missing')], 'no such folder'),
             (['--sweep', 'steps', '--runs', str(runs / 'std'), '--ckpt-name', 'nope.pt'], 'nope.pt: no such file'),
             (['--sweep', 'steps', '--runs', str(runs / 'std'), '--steps', '500'], 'exceeds'),
             (['--sweep', 'steps', '--runs', str(runs / 'std'), '--labels', 'a', 'b'], '--labels'),
             (['--sweep', 'steps', '--runs', str(runs / 'std'), '--data', str(runs / 'src')], 'hr_32')]
    for argv, message in cases:
        rc, out, err = sweep(base + argv, capsys)
        assert rc == 2 and err.startswith('error: ') and message in err and err.count('\n') == 1, (argv, err)
    assert not os.path.exists(tmp_path / 'x.csv')


def test_baselines_script_scores_the_training_free_rows(tmp_path, capsys):
    """experiments/baselines.py: the SR rows (the projection makes bicubic exactly consistent and no worse) and the
    relay rows (the box projection restores the tile means), one CSV row each, clear errors."""
    import baselines
    smooth_faces(tmp_path / 'src', 6, size=64, seed=3)
    data.prepare(str(tmp_path / 'src'), str(tmp_path / 'pairs'), lr=16, hr=64, val=3, progress=False)
    baselines.main(['--data', str(tmp_path / 'pairs' / 'val'), '--out', str(tmp_path / 'sr.csv')])
    rows = {r['label']: r for r in csv.DictReader(open(tmp_path / 'sr.csv'))}
    assert list(rows) == ['input (nearest)', 'bilinear', 'bicubic', 'lanczos', 'bicubic + projection (back-projection)']
    bp, bic = rows['bicubic + projection (back-projection)'], rows['bicubic']
    assert float(bp['consistency']) < 0.05 * float(bic['consistency']) and float(bp['psnr']) >= float(bic['psnr'])
    assert all(r['n'] == '3' for r in rows.values()) and rows['input (nearest)']['grid_texture'] == 'inf'
    baselines.main(['--data', str(tmp_path / 'pairs' / 'val'), '--n', '2', '--out', str(tmp_path / 'sr2.csv')])
    assert {r['n'] for r in csv.DictReader(open(tmp_path / 'sr2.csv'))} == {'2'}  # --n: the first N pairs only
    baselines.main(['--relay', str(tmp_path / 'src'), '--n', '4', '--out', str(tmp_path / 'relay.csv')])
    rows = {r['label']: r for r in csv.DictReader(open(tmp_path / 'relay.csv'))}
    assert len(rows) == 3 and all(r['consistency'] == '' and r['n'] == '4' for r in rows.values())
    box, near = rows['bicubic + box projection (tile means restored)'], rows['input (nearest up of the tile means)']
    assert float(box['psnr']) > float(near['psnr'])
    with pytest.raises(SystemExit, match='give one of --data'):
        baselines.main(['--out', str(tmp_path / 'x.csv')])
