"""
Helpers shared by the experiment drivers (experiments/quickstart.sh, dream.sh, relay.sh, speed.sh): collect the
evaluations of training runs into a results CSV, summarize a results CSV over seeds, merge CSVs, tell whether a
run has finished (so a driver that is stopped and started again skips the runs it has done), and run train.py
subprocesses a few at a time, one thread each (train_command, run_jobs: experiments/relay_stage2.py, relay64_256.py).

    python experiments/common.py collect --runs runs/a runs/b --labels standard "DREAM p=1" --out results/x.csv [--all]
    python experiments/common.py summarize results/dream/p_sweep.csv --by label --metrics psnr ssim
    python experiments/common.py merge OUT.csv IN.csv..      # one header; "DREAM_p=1" (sweep labels) -> "DREAM p=1"
    python experiments/common.py finished RUN STEP           # exit 0 when RUN/log.jsonl has an evaluation at STEP
    python experiments/common.py smoke-data SRC DST --n 24 --val 8 --lr 16 --hr 64   # a drivers' SMOKE=1 data set

Columns of `collect` follow ../shared/DESIGN.md "Results files": label, seed, step, train_s, sampler, steps, n,
psnr, ssim, consistency, flat_noise, the bicubic and input (relay stage 2) baselines, plus the run's SR options and
DREAM p (empty: standard). `--all`: every evaluation of each run (a curve), not only the last.
`summarize`: one row per group of equal values in the --by columns, each metric as mean ± std (min-max) over the
rows of the group (the sample std, n - 1); n_seeds counts the distinct `seed` values.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

# as train.py's evaluation logs them; '' where a task has none
SCORES = ('psnr ssim consistency flat_noise grid_texture bicubic_psnr bicubic_ssim bicubic_consistency '
          'bicubic_flat_noise bicubic_grid_texture input_psnr input_ssim').split()
RUN_FLAGS = ('model loss init pred residual noise_cond project project_smooth norm_groups upsample dream_p batch_size '
             'lr lr_schedule warmup').split()
COLUMNS = ['label', 'seed', 'step', 'train_s', 'sampler', 'steps', 'temperature', 'n', *SCORES, *RUN_FLAGS, 'run']


# ----------------------------------------------------------------------------- spread over seeds
def spread(values):
    """(mean, sample std (0 for one value), min, max) of a list of numbers."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, min(values), max(values)


def fmt(values, digits, dash='-'):
    """'mean ± std (min-max)' with `digits` decimals; one value prints alone."""
    mean, std, lo, hi = spread(values)
    if len(values) == 1:
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f} ({lo:.{digits}f}{dash}{hi:.{digits}f})'


def digits_of(metric):
    """Decimals a table shows: 3 for SSIM and the noise / texture ratios, 2 for PSNR and the rest."""
    if 'ssim' in metric or 'noise' in metric:
        return 3
    return 2


def summarize(rows, by, metrics):
    """Group `rows` (dicts of strings, as csv.DictReader gives) by the --by columns, in order of first appearance;
    each metric of a group as fmt() of its non-empty values ('-' when none)."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    table = []
    for key, group in groups.items():
        row = dict(zip(by, key))
        row['n_seeds'] = len({r.get('seed') for r in group})
        for m in metrics:
            values = [float(r[m]) for r in group if r.get(m) not in (None, '')]
            row[m] = fmt(values, digits_of(m)) if values else '-'
        table.append(row)
    return table


def markdown(table, columns):
    """The rows of summarize() as a markdown table."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in table:
        lines.append('| ' + ' | '.join(str(r[c]) for c in columns) + ' |')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- runs -> results rows
def sampler_of(task):
    """The sampler train.py's evaluation uses: SR3's DDPM, EDM's Heun (relay stage 1), the relay sampler (stage 2)."""
    if task.startswith('sr'):
        return 'ddpm'
    if '_' in task:
        return 'relay'
    return 'edm'


def read_log(run):
    with open(os.path.join(run, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def finished(run, step):
    """True when the run logged an evaluation at `step` (its last, for a driver's runs)."""
    if not os.path.isfile(os.path.join(run, 'log.jsonl')):
        return False
    return any(r.get('eval') and r['step'] == step for r in read_log(run))


def checkpoint_step(path):
    """The step of the checkpoint at `path`, None when there is none."""
    import torch
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location='cpu', weights_only=True)['step']


def train_command(flags, out, max_iters):
    """The train.py command that brings the run in `out` to `max_iters` (flags: train.py's, without --out), or None
    when its checkpoint is there already: --resume from a checkpoint, --overwrite without one (a run stopped before
    its first checkpoint starts over)."""
    step = checkpoint_step(os.path.join(out, 'ckpt.pt'))
    if step is not None and step >= max_iters:
        return None
    return [sys.executable, 'train.py', *map(str, flags), '--max-iters', str(max_iters), '--out', out,
            '--resume' if step is not None else '--overwrite']


def run_jobs(jobs, n=1, cwd=None, threads=1, poll=0.5):
    """Run (name, command, log) jobs at most n at a time in `cwd`, each with OMP_NUM_THREADS=threads (None: unset,
    torch's default) and its output appended to its log. The failed ones are named in one SystemExit at the end,
    after the others have run."""
    env = dict(os.environ)
    if threads is not None:
        env['OMP_NUM_THREADS'] = str(threads)
    pending, running, failed = list(jobs), [], []
    while pending or running:
        while pending and len(running) < n:
            name, cmd, log = pending.pop(0)
            os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
            print(f'{name}: started, log {log}: {" ".join(cmd)}', flush=True)
            f = open(log, 'a')
            running.append((name, subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env), f, log))
        time.sleep(poll)
        for job in list(running):
            name, proc, f, log = job
            if proc.poll() is None:
                continue
            f.close()
            running.remove(job)
            print(f'{name}: ' + (f'failed ({proc.returncode}), see {log}' if proc.returncode else 'done'), flush=True)
            if proc.returncode:
                failed.append(f'{name} ({log})')
    if failed:
        raise SystemExit(f'{len(failed)} of {len(jobs)} jobs failed: ' + ', '.join(failed))


def eval_rows(run, label, every=False):
    """The run's last evaluation (every=False) or all of them, as results rows. A run with no scored evaluation
    (relay stage 1 has no reference images) gives one row at its last logged step, metrics empty: its timing."""
    import torch
    rows = read_log(run)
    evals = [r for r in rows if r.get('eval')]
    if not evals:
        timed = [r for r in rows if 'train_s' in r]
        if not timed:
            raise SystemExit(f'{run}: neither an evaluation nor a timed step in log.jsonl')
        evals = [max(timed, key=lambda r: r['step'])]
    args = torch.load(os.path.join(run, 'ckpt.pt'), map_location='cpu', weights_only=True)['args']
    is_sr = args['task'].startswith('sr')
    out = []
    for ev in evals if every else evals[-1:]:
        train_s = max((r['train_s'] for r in rows if 'train_s' in r and r['step'] <= ev['step']), default=None)
        row = dict(label=label, seed=args['seed'], step=ev['step'], train_s=train_s, sampler=sampler_of(args['task']),
                   steps=ev.get('eval_steps', ''), n=args['eval_n'], run=run)
        row['temperature'] = args.get('temperature', 1.0) if is_sr else ''
        for k in SCORES:
            row[k] = ev.get(k, '')
        for k in RUN_FLAGS:
            row[k] = args.get(k, '')
        row['dream_p'] = args['dream_p'] if args.get('dream') else ''
        out.append(row)
    return out


def collect(runs, labels, out, every=False):
    """Write the eval_rows of each (run, label) to the CSV `out`; returns the number of rows."""
    n = 0
    with open(out, 'w', newline='') as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for run, label in zip(runs, labels):
            rows = eval_rows(run, label, every)
            writer.writerows(rows)
            n += len(rows)
    return n


def write_results(csv_path, rows, columns, md_path=None, text=None):
    """Write `rows` (dicts) to `csv_path` under `columns` (csv_path None: no CSV), and with `md_path` the markdown
    `text` beside it; the text is printed. The folders are made as needed. md_path without text is refused before
    anything is written."""
    if md_path is not None and text is None:
        raise ValueError(f'write_results: {md_path} needs its markdown text (text=None)')
    for path in (csv_path, md_path):
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if csv_path is not None:
        with open(csv_path, 'w', newline='') as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)
    if md_path is not None:
        with open(md_path, 'w') as f:
            f.write(text.rstrip('\n') + '\n')
    if text is not None:
        print(text)


def merge(out, inputs):
    """Concatenate CSVs that share a header into `out` (one header); sweep.py's labels cannot hold spaces, so
    'DREAM_p=1' becomes 'DREAM p=1'."""
    lines = []
    for i, path in enumerate(inputs):
        with open(path) as f:
            body = f.read().splitlines()
        lines += body if i == 0 else body[1:]
    with open(out, 'w') as f:
        f.write('\n'.join(line.replace('DREAM_p=1', 'DREAM p=1') for line in lines) + '\n')


def smoke_data(src, dst, n, val, lr, hr):
    """The first n images of src (sorted) as an SR data set in dst (val: the first `val` held out): the tiny data
    set of a driver's SMOKE=1 check, built once."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import data
    if os.path.isdir(os.path.join(dst, 'val')):
        return
    names = sorted(os.listdir(src))[:n]
    pick = dst + '_src'
    os.makedirs(pick, exist_ok=True)
    for name in names:
        link = os.path.join(pick, name)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(os.path.join(src, name)), link)
    data.prepare(pick, dst, lr=lr, hr=hr, val=val, progress=False)


# ----------------------------------------------------------------------------- command line
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('collect', help='runs -> one results CSV')
    c.add_argument('--runs', nargs='+', required=True)
    c.add_argument('--labels', nargs='+')
    c.add_argument('--out', required=True)
    c.add_argument('--all', action='store_true', help='every evaluation of each run, not only the last')
    s = sub.add_parser('summarize', help='mean ± std (min-max) over seeds, as a markdown table')
    s.add_argument('csv')
    s.add_argument('--by', nargs='+', required=True)
    s.add_argument('--metrics', nargs='+', default=['psnr', 'ssim'])
    m = sub.add_parser('merge', help='concatenate CSVs with one header')
    m.add_argument('out')
    m.add_argument('inputs', nargs='+')
    f = sub.add_parser('finished', help='exit 0 when RUN has an evaluation at STEP')
    f.add_argument('run')
    f.add_argument('step', type=int)
    d = sub.add_parser('smoke-data', help='the first N images of SRC as a small SR data set in DST')
    d.add_argument('src')
    d.add_argument('dst')
    d.add_argument('--n', type=int, default=24)
    d.add_argument('--val', type=int, default=8)
    d.add_argument('--lr', type=int, default=16)
    d.add_argument('--hr', type=int, default=64)
    a = ap.parse_args(argv)
    if a.cmd == 'collect':
        labels = a.labels or a.runs
        if len(labels) != len(a.runs):
            raise SystemExit('--labels: one per run')
        n = collect(a.runs, labels, a.out, a.all)
        print(f'{a.out}: {n} rows')
    elif a.cmd == 'summarize':
        with open(a.csv, newline='') as fh:
            rows = list(csv.DictReader(fh))
        print(markdown(summarize(rows, a.by, a.metrics), a.by + ['n_seeds'] + a.metrics))
    elif a.cmd == 'merge':
        merge(a.out, a.inputs)
    elif a.cmd == 'smoke-data':
        smoke_data(a.src, a.dst, a.n, a.val, a.lr, a.hr)
    else:
        return 0 if finished(a.run, a.step) else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
