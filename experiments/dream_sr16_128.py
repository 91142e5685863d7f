"""Does DREAM hold up at the paper's task, 16 -> 128 (8x)? The driver behind docs/dream.md's 16 -> 128 section.

    python experiments/dream_sr16_128.py train  --data data/faces_16_128 [--seeds 0 1 2] [--methods standard p1 p0]
    python experiments/dream_sr16_128.py cost                                            # s/it of each loss, alone
    python experiments/dream_sr16_128.py curves  --data data/faces_16_128 [--n 32]     # PSNR/SSIM vs iterations
    python experiments/dream_sr16_128.py final   --data data/faces_16_128 [--n 100]    # the last checkpoint, 100 faces
    python experiments/dream_sr16_128.py temperature --data data/faces_16_128 [--seeds 0] [--temperatures 0 0.3 ...]
    python experiments/dream_sr16_128.py steps   --data data/faces_16_128 [--seeds 0] [--n 32] [--steps 2 5 10 ...]
    python experiments/dream_sr16_128.py report                                          # tables (markdown) + plots

`--data` is `data.py prepare ../shared/data/faces DIR --lr 16 --hr 128 --val 100`: train on faces 00100-02999,
evaluate on 00000-00099. Every stage is resumable: a finished run is skipped, an unfinished one resumed, and a CSV row
already written is not computed again. Runs go to --runs (default runs/dream128), results to results/dream/.

Methods (the training recipe is configs/sr16_128_cpu.toml, turned into train.py flags; what differs is listed):
  standard   the standard loss (SR3's L1 on the model's target)
  p1         DREAM, lambda = sqrt(1 - alpha_bar)      (--dream, the paper's default)
  p0         DREAM, lambda = 1 (full rectification)   (--dream --dream-p 0)
  sr3        the paper's own formulation at the same budget: eps-prediction, no residual, no projection,
             temperature 1, standard loss
  sr3_dream  the same with DREAM p = 1
Every row carries the training-free baselines on the same faces: bicubic and bicubic + the exact low-resolution
projection (one step of back-projection, `baseline_psnr`).
"""
import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import metrics  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from diffusion import LowResProjection  # noqa: E402
from runtime import pick_dtype  # noqa: E402
from tasks import model_from_args, sample_and_score  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'sr16_128_cpu.toml')
SR3_FORM = dict(pred='eps', residual=False, project=False, project_smooth=0.0, temperature=1.0)
METHODS = {
    'standard': ('standard', dict(dream=False)),
    'p1': ('DREAM p=1', dict(dream=True, dream_p=1.0)),
    'p0': ('DREAM p=0', dict(dream=True, dream_p=0.0)),
    'sr3': ('SR3 formulation, standard', dict(SR3_FORM, dream=False)),
    'sr3_dream': ('SR3 formulation, DREAM p=1', dict(SR3_FORM, dream=True, dream_p=1.0)),
}
COLUMNS = ('task label method seed step train_s sampler steps temperature project n psnr psnr_std ssim '
           'consistency bicubic_psnr bicubic_ssim baseline_psnr baseline_ssim').split()
OUT = os.path.join(ROOT, 'results', 'dream')


BASE_ITERS = 2100  # the recipe's length; a longer --iters continues the recipe's run of that seed in a copy


def run_dir(a, method, seed, iters=None):
    iters = a.iters if iters is None else iters
    return os.path.join(a.runs, f'{method}_s{seed}' + ('' if iters == BASE_ITERS else f'_it{iters}'))


def recipe_flags(overrides):
    """train.py's flags for the recipe file with `overrides` on top (True -> --flag, False -> left out)."""
    import tomllib
    with open(CONFIG, 'rb') as f:
        cfg = tomllib.load(f)
    cfg.update(overrides)
    flags = []
    for key, value in cfg.items():
        name = '--' + key.replace('_', '-')
        if value is True:
            flags.append(name)
        elif value is not False:
            flags += [name, str(value)]
    return flags


def train(a):
    """Each (method, seed) run of the recipe, one after another; resumable."""
    for seed in a.seeds:
        for method in a.methods:
            out = run_dir(a, method, seed)
            ckpt = os.path.join(out, 'ckpt.pt')
            overrides = dict(METHODS[method][1], data=a.data, out=out, seed=seed, max_iters=a.iters)
            cmd = [sys.executable, os.path.join(ROOT, 'train.py'), *recipe_flags(overrides)]
            base = run_dir(a, method, seed, BASE_ITERS)
            if not os.path.exists(ckpt) and a.iters > BASE_ITERS and os.path.exists(os.path.join(base, 'ckpt.pt')):
                shutil.copytree(base, out)  # the constant learning rate makes this the same as training a.iters
            if os.path.exists(ckpt):
                if load_checkpoint(ckpt)['step'] >= a.iters:
                    print(f'{out}: done')
                    continue
                cmd.append('--resume')
            print(' '.join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def append_row(path, row):
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, '') for k in COLUMNS})


def heldout_batch(a, n):
    pairs = data.SRPairs(os.path.join(a.data, 'val'), 16, 128)
    items = [pairs[i] for i in range(min(n, len(pairs)))]
    return {k: torch.stack([it[k] for it in items]) for k in ('hr', 'lr', 'sr')}


def baselines(batch):
    """PSNR / SSIM of bicubic and of bicubic + the exact LR projection on the same faces."""
    bic = batch['sr']
    proj = LowResProjection(batch['lr'], bic.shape[-2:])(bic).clamp(-1, 1)
    res = {}
    for name, x in (('bicubic', bic), ('baseline', proj)):
        m = metrics.mean_metrics(metrics.compute_metrics(x, batch['hr'], batch['lr']))
        res[f'{name}_psnr'], res[f'{name}_ssim'] = m['psnr'], m['ssim']
    return res


def score(ckpt_path, batch, steps, sampler, temperature, seed, chunk=16):
    """Sample the EMA model of a checkpoint on the held-out faces (in chunks) -> mean metrics (+ per-image PSNR std)."""
    ck = load_checkpoint(ckpt_path)
    cfg = dict(ck['args'])
    if temperature is not None:
        cfg['temperature'] = temperature
    model = model_from_args(cfg)
    model.load_state_dict(ck['ema'])
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    dtype, _ = pick_dtype(cfg.get('dtype', 'auto'), torch.device('cpu'))  # as train.py's own evaluations
    per_image = []
    n = len(batch['hr'])
    for i in range(0, n, chunk):
        part = {k: v[i:i + chunk] for k, v in batch.items()}
        with torch.inference_mode():
            res, _, _ = sample_and_score(model, cfg, part, steps, sampler=sampler, generator=gen, dtype=dtype)
        per_image.append((len(part['hr']), res))
    total = sum(k for k, _ in per_image)
    out = {key: sum(k * r[key] for k, r in per_image) / total for key in ('psnr', 'ssim', 'consistency')}
    out['psnr_std'] = statistics.pstdev([r['psnr'] for _, r in per_image]) if len(per_image) > 1 else 0.0
    out.update(step=ck['step'], train_s=round(ck.get('train_s', 0.0), 1), temperature=cfg.get('temperature', 1.0),
               project=int(bool(cfg.get('project'))))
    return out


def evaluate(a, csv_path, points, n, seed_of_sampling=1234):
    """points: (method, seed, ckpt, sampler, steps, temperature or None); rows already in csv_path are skipped."""
    batch = heldout_batch(a, n)
    base = baselines(batch)
    done = {(r['method'], r['seed'], r['step'], r['sampler'], r['steps'], r['temperature'], r['n'])
            for r in read_rows(csv_path)}
    for method, seed, ckpt, sampler, steps, temperature in points:
        if not os.path.exists(ckpt):
            print(f'missing {ckpt}: skipped')
            continue
        step = load_checkpoint(ckpt)['step']
        temp_key = temperature if temperature is not None else load_checkpoint(ckpt)['args'].get('temperature', 1.0)
        key = (method, str(seed), str(step), sampler, str(steps), str(float(temp_key)), str(n))
        if key in done:
            continue
        done.add(key)  # ckpt.pt and the last snapshot are the same step: score it once
        res = score(ckpt, batch, steps, sampler, temperature, seed_of_sampling)
        row = dict(task='sr16_128', label=METHODS[method][0], method=method, seed=seed, sampler=sampler,
                   steps=steps, n=n, **res, **base)
        row['temperature'] = float(row['temperature'])
        append_row(csv_path, row)
        print(f"{method} s{seed} step {step} {sampler} {steps} T={row['temperature']}: "
              f"{res['psnr']:.2f} dB / {res['ssim']:.3f} (bicubic {base['bicubic_psnr']:.2f}, "
              f"back-projection {base['baseline_psnr']:.2f})", flush=True)


def snapshots(out):
    files = sorted(f for f in os.listdir(out) if f.startswith('ckpt_') and f.endswith('.pt')) if os.path.isdir(out) else []
    return [os.path.join(out, f) for f in files] + [os.path.join(out, 'ckpt.pt')]


def curves(a):
    """PSNR / SSIM against iterations: train.py's own periodic evaluations from each run's log.jsonl (the recipe
    evaluates the first 32 held-out faces, 50 DDPM steps, its own sampler and sampling noise); with --rescore, every
    snapshot (ckpt_<step>.pt) scored here instead, with this driver's sampling noise."""
    path = os.path.join(OUT, 'sr16_128_curves.csv')
    points = []
    for m in a.methods:
        for s in a.seeds:
            if a.rescore:
                points += [(m, s, c, 'ddpm', a.eval_steps, None) for c in snapshots(run_dir(a, m, s))]
            else:
                curves_from_log(a, path, m, s)
    evaluate(a, path, points, a.n)


def curves_from_log(a, path, method, seed):
    log = os.path.join(run_dir(a, method, seed), 'log.jsonl')
    if not os.path.exists(log):
        print(f'missing {log}: skipped')
        return
    ck = load_checkpoint(os.path.join(run_dir(a, method, seed), 'ckpt.pt'))
    cfg = ck['args']
    done = {(r['method'], r['seed'], r['step']) for r in read_rows(path)}
    with open(log) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_s = {r['step']: r['train_s'] for r in rows if 'train_s' in r}
    base = baselines(heldout_batch(a, cfg['eval_n']))
    for r in rows:
        if not r.get('eval') or (method, str(seed), str(r['step'])) in done:
            continue
        last = max((k for k in train_s if k <= r['step']), default=None)
        append_row(path, dict(task='sr16_128', label=METHODS[method][0], method=method, seed=seed, step=r['step'],
                              train_s=train_s.get(last, ''), sampler='ddpm', steps=r['eval_steps'],
                              temperature=float(cfg.get('temperature', 1.0)), project=int(bool(cfg.get('project'))),
                              n=cfg['eval_n'], psnr=r['psnr'], ssim=r['ssim'], consistency=r.get('consistency', ''),
                              bicubic_psnr=r['bicubic_psnr'], bicubic_ssim=r['bicubic_ssim'],
                              baseline_psnr=base['baseline_psnr'], baseline_ssim=base['baseline_ssim']))


def final(a):
    points = [(m, s, os.path.join(run_dir(a, m, s), 'ckpt.pt'), 'ddpm', a.eval_steps, None)
              for m in a.methods for s in a.seeds]
    evaluate(a, os.path.join(OUT, 'sr16_128_final.csv'), points, a.n)


def temperature(a):
    """The recipe's sampler at other temperatures (a sampling option: no retraining), last checkpoints."""
    points = [(m, s, os.path.join(run_dir(a, m, s), 'ckpt.pt'), 'ddpm', a.eval_steps, t)
              for m in a.methods for s in a.seeds for t in a.temperatures]
    evaluate(a, os.path.join(OUT, 'sr16_128_temperature.csv'), points, a.n)


def steps(a):
    points = []
    for m in a.methods:
        for s in a.seeds:
            ckpt = os.path.join(run_dir(a, m, s), 'ckpt.pt')
            for k in a.steps:
                points.append((m, s, ckpt, 'ddpm', k, 1.0))       # DDPM as the paper runs it (temperature 1)
                points.append((m, s, ckpt, 'ddpm', k, None))      # the recipe's sampler (its own temperature)
    evaluate(a, os.path.join(OUT, 'sr16_128_steps.csv'), points, a.n)


# ----------------------------------------------------------------------------- report
def spread(values):
    """'mean ± std (min-max)' of a list (std: sample standard deviation; one value: just the value)."""
    if len(values) == 1:
        return f'{values[0]:.2f} (1 seed)'
    dash = ' to ' if min(values) < 0 else '-'  # '-7.19 to -7.08', not '-7.19--7.08'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}{dash}{max(values):.2f})'


def group(rows, *keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def cost(a):
    """The cost of an iteration of each loss, timed alone by bench.py (tiny, 128x128, batch 4): the wall-clock axis."""
    cmd = [sys.executable, os.path.join(ROOT, 'bench.py'), '--model', 'tiny', '--res', '128', '--batch-size', '4',
           '--iters', '20', '--budget', '60', '--no-probe', '--json']
    print(' '.join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    with open(os.path.join(OUT, 'sr16_128_cost_bench.txt'), 'w') as f:
        f.write(out)
    b = json.loads(out.strip().splitlines()[-1])
    res = dict(standard_step_s=b['step_s'], dream_step_s=b['dream_step_s'], dream_overhead=b['dream_overhead'],
               device=b['device_name'], dtype=b['dtype'], command=' '.join(['python', 'bench.py'] + cmd[2:]))
    with open(os.path.join(OUT, 'sr16_128_cost.json'), 'w') as f:
        json.dump(res, f, indent=1)
    print(res)


def read_cost():
    path = os.path.join(OUT, 'sr16_128_cost.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def step_s(method, cost):
    """Seconds per training iteration, timed alone: DREAM's extra forward is the only difference in cost (eps or v,
    residual or not, cost the same)."""
    return cost['dream_step_s'] if METHODS[method][1].get('dream') else cost['standard_step_s']


def report(a):
    cost = read_cost()
    lines = []
    final_rows = read_rows(os.path.join(OUT, 'sr16_128_final.csv'))
    if final_rows:
        lines += final_table(final_rows)
    curve_rows = read_rows(os.path.join(OUT, 'sr16_128_curves.csv'))
    if curve_rows:
        lines += reach_table(curve_rows, cost)
        lines += paired_table(curve_rows)
        plot_curves([r for r in curve_rows if not r['method'].startswith('sr3')], cost)  # the SR3 formulation's
        # PSNR is 5-9 dB lower: its rows are in the tables, not on the plot's scale
    temp_rows = read_rows(os.path.join(OUT, 'sr16_128_temperature.csv'))
    if temp_rows:
        lines += temperature_table(temp_rows)
    step_rows = read_rows(os.path.join(OUT, 'sr16_128_steps.csv'))
    if step_rows:
        lines += steps_table(step_rows) + steps_table(step_rows, 'ssim')
        plot_steps(step_rows)
    text = '\n'.join(lines)
    print(text)
    with open(os.path.join(OUT, 'sr16_128_report.md'), 'w') as f:
        f.write(text + '\n')


def final_table(rows):
    """The last checkpoints: mean ± std (min-max) over seeds, DREAM minus standard paired by seed, and on how many
    seeds each method beats the two training-free baselines."""
    r0 = rows[0]
    bic, base = float(r0['bicubic_psnr']), float(r0['baseline_psnr'])
    out = [f"Final checkpoints, {r0['n']} held-out faces, DDPM {r0['steps']} steps, each run's own sampler:", '',
           '| method | seeds | step | PSNR (dB) | SSIM | minus standard, paired by seed (PSNR) | above bicubic / '
           'back-projection |', '|---|---|---|---|---|---|---|']
    std_step = max((int(r['step']) for r in rows if r['method'] == 'standard'), default=None)
    std_by_seed = {r['seed']: float(r['psnr']) for r in rows if r['method'] == 'standard' and int(r['step']) == std_step}
    for (method, _), rs in group(rows, 'method', 'step').items():
        psnr = [float(r['psnr']) for r in rs]
        ssim = [float(r['ssim']) for r in rs]
        diffs = [float(r['psnr']) - std_by_seed[r['seed']] for r in rs if r['seed'] in std_by_seed]
        paired = spread(diffs) if diffs and method != 'standard' else '–'
        wins = f"{sum(v > bic for v in psnr)} / {sum(v > base for v in psnr)} of {len(psnr)}"
        out.append(f"| {rs[0]['label']} | {len(rs)} | {rs[0]['step']} | {spread(psnr)} | {spread3(ssim)} | {paired} | "
                   f"{wins} |")
    out += [f"| *bicubic* | | | *{bic:.2f}* | *{float(r0['bicubic_ssim']):.3f}* | | |",
            f"| *back-projection (bicubic + exact LR projection)* | | | *{base:.2f}* | "
            f"*{float(r0['baseline_ssim']):.3f}* | | |", '']
    return out


def spread3(values):
    """spread() with three decimals (SSIM)."""
    if len(values) == 1:
        return f'{values[0]:.3f} (1 seed)'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}-{max(values):.3f})'


def reach_table(rows, cost=None):
    """PSNR per (method, step): mean ± std over seeds (n seeds); the first step at which the mean reaches the standard's
    final mean, and that step in seconds of training timed alone (cost: read_cost())."""
    by = {}
    for (method, step), rs in group(rows, 'method', 'step').items():
        by.setdefault(method, {})[int(step)] = [float(r['psnr']) for r in rs]
    steps_all = sorted({s for m in by.values() for s in m})
    target = statistics.mean(by['standard'][max(by['standard'])]) if 'standard' in by else None
    title = 'PSNR (dB) against training iterations, mean ± std over seeds (n seeds)'
    if target is not None:
        title += f"; the standard's final mean is {target:.2f}"
    out = [title + ':', '',
           '| method | ' + ' | '.join(str(s) for s in steps_all) + " | iterations to the standard's final mean | "
           'seconds alone |', '|---' * (len(steps_all) + 3) + '|']
    for method, m in by.items():
        cells = [(f'{statistics.mean(m[s]):.2f} ± {statistics.stdev(m[s]):.2f} ({len(m[s])})' if len(m[s]) > 1 else
                  f'{m[s][0]:.2f} (1)') if s in m else '' for s in steps_all]
        reach = next((s for s in sorted(m) if target is not None and statistics.mean(m[s]) >= target), None)
        secs = f'{reach * step_s(method, cost):.0f}' if reach is not None and cost else '–'
        out.append(f'| {METHODS[method][0]} | ' + ' | '.join(cells) + f" | {reach if reach else 'not reached'} | "
                   f'{secs} |')
    return out + ['']


PAIRED_WITH = {'sr3_dream': 'sr3'}  # DREAM in the SR3 formulation is paired with that formulation's standard loss


def paired_table(rows):
    """Each method minus the standard loss at the same step, paired by seed: mean ± std (min-max). SR3's formulation
    with DREAM is paired with SR3's formulation with the standard loss (PAIRED_WITH): DREAM's own effect there."""
    psnr = {(r['method'], r['seed'], r['step']): float(r['psnr']) for r in rows}
    steps_all = sorted({int(r['step']) for r in rows})
    out = ['PSNR minus the standard loss at the same iteration, paired by seed (dB; the SR3 formulation with DREAM '
           'minus the SR3 formulation with the standard loss):', '',
           '| method | ' + ' | '.join(str(s) for s in steps_all) + ' |', '|---' * (len(steps_all) + 1) + '|']
    for (method,), rs in group(rows, 'method').items():
        if method == 'standard':
            continue
        ref = PAIRED_WITH.get(method, 'standard')
        cells = []
        for s in steps_all:
            d = [float(r['psnr']) - psnr[(ref, r['seed'], r['step'])] for r in rs
                 if int(r['step']) == s and (ref, r['seed'], r['step']) in psnr]
            cells.append(spread(d).replace(' (1 seed)', ' (1)') if d else '')
        label = METHODS[method][0] + (f' - {METHODS[ref][0]}' if ref != 'standard' else '')
        out.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return out + ['']


def temperature_table(rows):
    """PSNR / SSIM of the last checkpoints against the sampling temperature: mean ± std over seeds."""
    temps = sorted({float(r['temperature']) for r in rows})
    r0 = rows[0]
    out = [f"PSNR (dB) / SSIM against the sampling temperature (DDPM {r0['steps']} steps, {r0['n']} faces, mean ± std "
           f"over seeds; bicubic {float(r0['bicubic_psnr']):.2f}, back-projection {float(r0['baseline_psnr']):.2f}):", '',
           '| method | seeds | ' + ' | '.join(f'T = {t:g}' for t in temps) + ' |', '|---' * (len(temps) + 2) + '|']
    for (method,), rs in group(rows, 'method').items():
        cells = []
        for t in temps:
            sel = [r for r in rs if float(r['temperature']) == t]
            psnr = [float(r['psnr']) for r in sel]
            ssim = [float(r['ssim']) for r in sel]
            cells.append(f'{spread(psnr)} / {statistics.mean(ssim):.3f}' if sel else '')
        out.append(f"| {METHODS[method][0]} | {len({r['seed'] for r in rs})} | " + ' | '.join(cells) + ' |')
    return out + ['']


def steps_table(rows, metric='psnr'):
    """PSNR (or SSIM) against sampling steps per sampler temperature, and the fewest steps at which each method
    reaches the standard's best over all step counts of that temperature."""
    name, unit, fmt = {'psnr': ('PSNR', ' (dB)', '.2f'), 'ssim': ('SSIM', '', '.3f')}[metric]
    out = []
    for (temp,), rs in group(rows, 'temperature').items():
        by = group(rs, 'method', 'steps')
        ks = sorted({int(r['steps']) for r in rs})
        mean = {key: statistics.mean(float(r[metric]) for r in v) for key, v in by.items()}
        best = max((v for (m, _), v in mean.items() if m == 'standard'), default=None)
        seeds = sorted({r['seed'] for r in rs})
        out += [f'{name}{unit} against sampling steps, DDPM at temperature {temp} ({rs[0]["n"]} faces, seed(s) '
                f'{", ".join(seeds)}, mean over them)' + (f"; the standard's best is {best:{fmt}}" if best else '') + ':',
                '', '| method | ' + ' | '.join(str(k) for k in ks) + " | fewest steps to the standard's best |",
                '|---' * (len(ks) + 2) + '|']
        for method in dict.fromkeys(r['method'] for r in rs):
            cells = [f'{mean[(method, str(k))]:{fmt}}' if (method, str(k)) in mean else '' for k in ks]
            reach = next((k for k in ks if (method, str(k)) in mean and best is not None
                          and mean[(method, str(k))] >= best), None)
            out.append(f'| {METHODS[method][0]} | ' + ' | '.join(cells) + f" | {reach if reach else 'not reached'} |")
        out.append('')
    return out


def plot_curves(rows, cost=None):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ncol = 2 if cost else 1
    fig, axes = plt.subplots(2, ncol, figsize=(5 * ncol, 7), squeeze=False)
    for (method,), rs in group(rows, 'method').items():
        by_step = group(rs, 'step')
        xs = sorted(int(s) for (s,) in by_step)
        for i, key in enumerate(('psnr', 'ssim')):
            vals = [[float(r[key]) for r in by_step[(str(s),)]] for s in xs]
            mean = [statistics.mean(v) for v in vals]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            axes[i][0].errorbar(xs, mean, yerr=err, label=METHODS[method][0], capsize=3, marker='o')
            if cost:
                axes[i][1].errorbar([x * step_s(method, cost) / 60 for x in xs], mean, yerr=err,
                                    label=METHODS[method][0], capsize=3, marker='o')
    base = rows[0]
    for i, key in enumerate(('psnr', 'ssim')):
        for j in range(ncol):
            ax = axes[i][j]
            ax.axhline(float(base[f'bicubic_{key}']), color='gray', ls=':', label='bicubic')
            ax.axhline(float(base[f'baseline_{key}']), color='black', ls='--', label='back-projection')
            ax.set_xlabel('training iteration' if j == 0 else 'minutes of training, timed alone')
            ax.set_ylabel(key.upper())
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"sr16_128, {base['n']} held-out faces, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, 'sr16_128_curves.png'), dpi=100)


def plot_steps(rows):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, temp), rs in group(rows, 'method', 'temperature').items():
        by = group(rs, 'steps')
        ks = sorted(int(k) for (k,) in by)
        ax.plot(ks, [statistics.mean(float(r['psnr']) for r in by[(str(k),)]) for k in ks], marker='o',
                label=f'{METHODS[method][0]}, T={temp}')
    ax.axhline(float(rows[0]['bicubic_psnr']), color='gray', ls=':', label='bicubic')
    ax.axhline(float(rows[0]['baseline_psnr']), color='black', ls='--', label='back-projection')
    ax.set_xscale('log')
    ax.set_xlabel('DDPM sampling steps')
    ax.set_ylabel('PSNR')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, 'sr16_128_steps.png'), dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('stage', choices=['train', 'cost', 'curves', 'final', 'temperature', 'steps', 'report'])
    p.add_argument('--data', default='data/faces_16_128')
    p.add_argument('--runs', default='runs/dream128')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=['standard', 'p1', 'p0'], choices=list(METHODS))
    p.add_argument('--iters', type=int, default=2100)
    p.add_argument('--n', type=int, default=None, help='held-out faces (default: curves/steps 32, final 100)')
    p.add_argument('--eval-steps', type=int, default=50, help='DDPM steps of curves/final')
    p.add_argument('--rescore', action='store_true', help='curves: score the snapshots here, not the logged evaluations')
    p.add_argument('--temperatures', type=float, nargs='+', default=[0.0, 0.3, 0.6, 1.0],
                   help='temperature stage: the sampling temperatures')
    p.add_argument('--steps', type=int, nargs='+', default=[2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000])
    a = p.parse_args(argv)
    if a.n is None:
        a.n = 100 if a.stage == 'final' else 32
    stages = dict(train=train, cost=cost, curves=curves, final=final, temperature=temperature, steps=steps,
                  report=report)
    stages[a.stage](a)


if __name__ == '__main__':
    main()
