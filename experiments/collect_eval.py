"""Collect the final evaluation of training runs (their log.jsonl) into one results CSV, one row per run.

    python experiments/collect_eval.py --runs runs/quick --labels "tiny, residual v, project" --out results/q.csv
    python experiments/collect_eval.py --all --runs runs/std_s0 runs/dream_s0 --labels standard "DREAM p=1" --out c.csv

Columns follow ../shared/DESIGN.md "Results files": label, seed, step, train_s, sampler, steps, n, psnr, ssim,
consistency, flat_noise, bicubic_psnr, bicubic_ssim, bicubic_consistency, bicubic_flat_noise, input_psnr /
input_ssim (relay stage 2: its own input, the nearest-upsampled tile means), plus the run's SR options and DREAM p
(empty: standard).
--all: every evaluation of each run (a curve: one row per evaluated step), not only the last.
"""
import argparse
import csv
import json
import os

import torch

# as train.py's evaluation logs them; '' where a task has none
SCORES = ('psnr ssim consistency flat_noise grid_texture bicubic_psnr bicubic_ssim bicubic_consistency '
          'bicubic_flat_noise bicubic_grid_texture input_psnr input_ssim').split()
COLUMNS = ['label', 'seed', 'step', 'train_s', 'sampler', 'steps', 'temperature', 'n', *SCORES,
           *('model loss init pred residual noise_cond project project_smooth norm_groups upsample dream_p batch_size '
             'lr lr_schedule warmup').split(),
           'run']


def sampler_of(task):
    """The sampler train.py's evaluation uses: SR3's DDPM, EDM's Heun (relay stage 1), the relay sampler (stage 2)."""
    if task.startswith('sr'):
        return 'ddpm'
    return 'relay' if '_' in task else 'edm'


def eval_rows(run, label, every=False):
    """The run's last evaluation (every=False) or all of them, as results rows. A run with no scored evaluation
    (relay stage 1 has no reference images) gives one row at its last logged step, metrics empty: its timing."""
    rows = [json.loads(line) for line in open(os.path.join(run, 'log.jsonl'))]
    evals = [r for r in rows if r.get('eval')]
    if not evals:
        evals = [max((r for r in rows if 'train_s' in r), key=lambda r: r['step'], default=None)]
        if evals[0] is None:
            raise SystemExit(f'{run}: neither an evaluation nor a timed step in log.jsonl')
    args = torch.load(os.path.join(run, 'ckpt.pt'), map_location='cpu', weights_only=True)['args']
    out = []
    for ev in evals if every else evals[-1:]:
        train_s = max((r['train_s'] for r in rows if 'train_s' in r and r['step'] <= ev['step']), default=None)
        scores = {k: ev.get(k, '') for k in SCORES}
        out.append(dict(label=label, seed=args['seed'], step=ev['step'], train_s=train_s,
                        sampler=sampler_of(args['task']), steps=ev.get('eval_steps', ''),
                        temperature=args.get('temperature', 1.0) if args['task'].startswith('sr') else '',
                        n=args['eval_n'], **scores, model=args['model'], loss=args.get('loss', 'l1'),
                        init=args.get('init', 'default'), pred=args.get('pred', 'eps'),
                        residual=args.get('residual', False),
                        noise_cond=args.get('noise_cond', 'gamma'), project=args.get('project', False),
                        project_smooth=args.get('project_smooth', 0.0),
                        norm_groups=args.get('norm_groups'), upsample=args.get('upsample', 'nearest'),
                        dream_p=args['dream_p'] if args.get('dream') else '', batch_size=args['batch_size'],
                        lr=args['lr'], lr_schedule=args.get('lr_schedule', 'constant'), warmup=args.get('warmup', 0),
                        run=run))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', nargs='+', required=True)
    ap.add_argument('--labels', nargs='+')
    ap.add_argument('--out', required=True)
    ap.add_argument('--all', action='store_true', help='every evaluation of each run, not only the last')
    a = ap.parse_args()
    labels = a.labels or a.runs
    if len(labels) != len(a.runs):
        raise SystemExit('--labels: one per run')
    with open(a.out, 'w', newline='') as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for run, label in zip(a.runs, labels):
            writer.writerows(eval_rows(run, label, a.all))
    print(open(a.out).read())


if __name__ == '__main__':
    main()
