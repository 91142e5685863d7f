"""experiments/common.py, the helpers every driver's numbers pass through, on small inputs computed by hand."""
import csv
import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import common  # noqa: E402
import dream_report  # noqa: E402

# three seeds of one method and one seed of another, as a results CSV gives them (strings); one SSIM is missing
ROWS = [dict(label='DREAM', seed='0', psnr='22.0', ssim='0.70'),
        dict(label='DREAM', seed='1', psnr='23.0', ssim='0.72'),
        dict(label='DREAM', seed='2', psnr='24.0', ssim='0.77'),
        dict(label='standard', seed='0', psnr='21.5', ssim='')]


def test_spread_of_three_seeds_by_hand():
    # mean (0.70 + 0.72 + 0.77) / 3 = 0.73; deviations -0.03, -0.01, +0.04; sample variance
    # (0.0009 + 0.0001 + 0.0016) / (3 - 1) = 0.0013; std sqrt(0.0013) = 0.0360555...
    mean, std, lo, hi = common.spread([0.70, 0.72, 0.77])
    assert mean == pytest.approx(0.73, abs=1e-12)
    assert std == pytest.approx(math.sqrt(0.0013), abs=1e-12)
    assert (lo, hi) == (0.70, 0.77)
    assert common.spread([5.0]) == (5.0, 0.0, 5.0, 5.0)


def test_summarize_gives_mean_std_and_min_max_per_group():
    table = common.summarize(ROWS, ['label'], ['psnr', 'ssim'])
    # PSNR 22, 23, 24: mean 23, sample std sqrt((1 + 0 + 1) / 2) = 1; SSIM as above, 3 decimals
    assert table == [dict(label='DREAM', n_seeds=3, psnr='23.00 ± 1.00 (22.00-24.00)',
                          ssim='0.730 ± 0.036 (0.700-0.770)'),
                     dict(label='standard', n_seeds=1, psnr='21.50', ssim='-')]


def test_markdown_table_and_the_en_dash_of_the_dream_report():
    text = common.markdown(common.summarize(ROWS[:3], ['label'], ['psnr']), ['label', 'n_seeds', 'psnr'])
    assert text.splitlines() == ['| label | n_seeds | psnr |', '|---|---|---|',
                                 '| DREAM | 3 | 23.00 ± 1.00 (22.00-24.00) |']
    assert dream_report.fmt([22.0, 23.0, 24.0], 1) == '23.0 ± 1.0 (22.0–24.0)'


def test_summarize_cli_reads_a_results_csv(tmp_path, capsys):
    path = tmp_path / 'seeds.csv'
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, ['label', 'seed', 'psnr', 'ssim'])
        w.writeheader()
        w.writerows(ROWS)
    assert common.main(['summarize', str(path), '--by', 'label', '--metrics', 'psnr']) == 0
    assert '| DREAM | 3 | 23.00 ± 1.00 (22.00-24.00) |' in capsys.readouterr().out.splitlines()


def fake_run(folder, seed, evals, dream=False):
    """A run folder as train.py leaves it: log.jsonl (timed steps and evaluations) and ckpt.pt's flags."""
    os.makedirs(folder)
    with open(os.path.join(folder, 'log.jsonl'), 'w') as f:
        for step, psnr in evals:
            f.write(json.dumps(dict(step=step, loss=0.1, train_s=10.0 * step)) + '\n')
            f.write(json.dumps(dict(step=step, eval=True, psnr=psnr, ssim=0.5, eval_steps=50)) + '\n')
    args = dict(task='sr16_64', seed=seed, eval_n=32, model='tiny', dream=dream, dream_p=1.0, batch_size=4,
                lr=1e-3, temperature=0.6, norm_groups=8, upsample='nearest')
    torch.save(dict(args=args), os.path.join(folder, 'ckpt.pt'))


def test_collect_takes_the_last_or_every_evaluation_and_finished_reads_the_log(tmp_path):
    fake_run(str(tmp_path / 'a'), 0, [(2, 20.0), (4, 21.0)])
    fake_run(str(tmp_path / 'b'), 1, [(2, 20.5)], dream=True)
    out = str(tmp_path / 'c.csv')
    assert common.collect([str(tmp_path / 'a'), str(tmp_path / 'b')], ['standard', 'DREAM p=1'], out) == 2
    rows = list(csv.DictReader(open(out)))
    assert [(r['label'], r['seed'], r['step'], r['psnr'], r['train_s'], r['dream_p'], r['sampler']) for r in rows] == \
        [('standard', '0', '4', '21.0', '40.0', '', 'ddpm'), ('DREAM p=1', '1', '2', '20.5', '20.0', '1.0', 'ddpm')]
    assert common.collect([str(tmp_path / 'a')], ['standard'], out, every=True) == 2
    assert [r['step'] for r in csv.DictReader(open(out))] == ['2', '4']
    assert common.finished(str(tmp_path / 'a'), 4) and not common.finished(str(tmp_path / 'a'), 6)
    assert not common.finished(str(tmp_path / 'missing'), 4)


def test_merge_keeps_one_header_and_fixes_sweep_labels(tmp_path):
    first, second = tmp_path / 'a.csv', tmp_path / 'b.csv'
    first.write_text('label,steps\nDREAM_p=1,5\n')
    second.write_text('label,steps\nstandard,50\n')
    common.merge(str(tmp_path / 'm.csv'), [str(first), str(second)])
    assert (tmp_path / 'm.csv').read_text() == 'label,steps\nDREAM p=1,5\nstandard,50\n'


def test_train_command_skips_resumes_or_starts_over(tmp_path):
    out = str(tmp_path / 'run')
    flags = ['--task', 'relay64_256', '--seed', 1]
    # no checkpoint (a run stopped before its first one, or none): start over
    cmd = common.train_command(flags, out, 10)
    assert cmd[1:] == ['train.py', '--task', 'relay64_256', '--seed', '1', '--max-iters', '10', '--out', out,
                       '--overwrite']
    os.makedirs(out)
    torch.save(dict(step=4), os.path.join(out, 'ckpt.pt'))
    assert common.checkpoint_step(os.path.join(out, 'ckpt.pt')) == 4
    assert common.train_command(flags, out, 10)[-1] == '--resume'  # step 4 < 10
    assert common.train_command(flags, out, 4) is None  # finished
    assert common.train_command(flags, out, 3) is None


def test_run_jobs_runs_each_with_one_thread_and_names_the_failed(tmp_path):
    show = 'import os, sys; print(os.environ["OMP_NUM_THREADS"]); sys.exit(int(sys.argv[1]))'
    jobs = [(f'job{i}', [sys.executable, '-c', show, str(rc)], str(tmp_path / f'job{i}.log'))
            for i, rc in enumerate([0, 3, 0])]
    with pytest.raises(SystemExit, match=r'1 of 3 jobs failed: job1 \(.*job1\.log\)'):
        common.run_jobs(jobs, n=2, poll=0.01)
    assert [(tmp_path / f'job{i}.log').read_text() for i in range(3)] == ['1\n'] * 3  # all ran, one thread each
    common.run_jobs(jobs[:1], threads=2, poll=0.01)
    assert (tmp_path / 'job0.log').read_text() == '1\n2\n'  # appended


def test_write_results_writes_the_csv_and_the_markdown_and_prints_it(tmp_path, capsys):
    rows = [{'label': 'a', 'psnr': 20.5}, {'label': 'b', 'psnr': 21.0, 'ssim': 0.5}]
    out = tmp_path / 'new' / 'x.csv'
    common.write_results(str(out), rows, ['label', 'psnr', 'ssim'], str(tmp_path / 'new' / 'x.md'), '| a |\n')
    with open(out, newline='') as f:
        back = list(csv.DictReader(f))
    assert back == [{'label': 'a', 'psnr': '20.5', 'ssim': ''}, {'label': 'b', 'psnr': '21.0', 'ssim': '0.5'}]
    assert (tmp_path / 'new' / 'x.md').read_text() == '| a |\n'
    assert capsys.readouterr().out == '| a |\n\n'
    common.write_results(None, rows, ['label'], str(tmp_path / 'y.md'), 'only text')  # no CSV
    assert (tmp_path / 'y.md').read_text() == 'only text\n' and not (tmp_path / 'y.csv').exists()


def test_write_results_refuses_a_markdown_path_without_text_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match='z.md'):
        common.write_results(str(tmp_path / 'z.csv'), [{'label': 'a'}], ['label'], str(tmp_path / 'z.md'))
    assert not (tmp_path / 'z.csv').exists() and not (tmp_path / 'z.md').exists()
