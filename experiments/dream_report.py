"""Does DREAM hold up? Tables and plots, mean and spread over seeds, from the results files of the DREAM runs.

    python experiments/dream_report.py --curves results/dream/curves.csv --steps results/dream/steps.csv \
        --cost results/dream/cost.csv --out results/dream/main

--curves: `common.py collect --all` rows (held-out metrics every --eval-every iterations of each run, a `seed` per run);
--steps: sweep.py --sweep steps rows (final checkpoints x samplers x sampling steps); --cost: rows of short runs of
each method timed alone (`common.py collect`; cost per iteration = train_s / step), so that equal wall-clock is
iterations x the measured cost (training runs that share the 2 cores cannot time themselves); a method uses the
cost row whose label is the longest prefix of its own ("DREAM" serves "DREAM p=0"). The standard model's label is --standard.

Writes OUT_curves.png (PSNR / SSIM vs iteration and vs seconds, mean with min-max bars), OUT_steps.png (vs sampling
steps) and OUT_claims.csv (one row per claim and method), and prints the markdown tables docs/dream.md quotes:
final metrics per method (mean +- std, min-max, seeds), the same as differences to the standard paired by seed,
claim (a): iterations and seconds to reach the standard model's final mean PSNR / SSIM (the paper: 2-3x fewer for
DREAM), each method at the standard model's final wall-clock (equal time), claim (b): the fewest sampling steps at
which a method's mean reaches the standard model's best mean over steps (the paper: 10-20x fewer).
"""
import argparse
import csv
import statistics
from collections import defaultdict

from common import fmt as common_fmt
from common import spread

METRICS = ('psnr', 'ssim')


def read(path):
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ('step', 'steps', 'seed'):
            r[k] = int(float(r[k]))
        for k in ('psnr', 'ssim', 'consistency', 'bicubic_psnr', 'bicubic_ssim', 'bicubic_consistency', 'input_psnr',
                  'input_ssim'):
            if r.get(k) not in (None, ''):
                r[k] = float(r[k])
    return rows


def fmt(values, digits):
    """common.fmt with an en dash between min and max, as the docs tables print it."""
    return common_fmt(values, digits, dash='–')


def by(rows, *keys):
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def final_table(curves, labels):
    last = {}
    for (label, seed), rs in by(curves, 'label', 'seed').items():
        last[label, seed] = max(rs, key=lambda r: r['step'])
    b = next(iter(last.values()))
    has_c = isinstance(b.get('consistency'), float)  # relay rows have none (their LR is the box downsample)

    def cons(values):
        return fmt([v * 1e5 for v in values], 2) if has_c else '–'
    lines = ['| method | seeds | iterations | PSNR (dB) | SSIM | consistency (1e-5) |', '|---|---|---|---|---|---|']
    for label in labels:
        rs = [r for (lab, _), r in last.items() if lab == label]
        if rs:
            lines.append(f"| {label} | {len(rs)} | {rs[0]['step']} | {fmt([r['psnr'] for r in rs], 2)} | "
                         f"{fmt([r['ssim'] for r in rs], 3)} | {cons([r.get('consistency') for r in rs])} |")
    lines.append(f"| bicubic | – | – | {b['bicubic_psnr']:.2f} | {b['bicubic_ssim']:.3f} | "
                 f"{format(b['bicubic_consistency'] * 1e5, '.2f') if has_c else '–'} |")
    if b.get('input_psnr') not in (None, ''):
        lines.append(f"| the input | – | – | {b['input_psnr']:.2f} | {b['input_ssim']:.3f} | – |")
    return '\n'.join(lines), last


def paired_table(last, labels, standard):
    """Each method minus the standard model at the final iteration, paired by seed (the seed fixes the init and the
    data order, which move both alike): mean ± std (min–max) over the seeds both have."""
    lines = ['| method | seeds | PSNR − standard (dB) | SSIM − standard | better on |', '|---|---|---|---|---|']
    for label in labels:
        seeds = sorted(s for (lab, s) in last if lab == label and (standard, s) in last)
        if label == standard or not seeds:
            continue
        d = {m: [last[label, s][m] - last[standard, s][m] for s in seeds] for m in METRICS}
        wins = sum(v > 0 for v in d['psnr'])
        lines.append(f"| {label} | {len(seeds)} | {fmt(d['psnr'], 2)} | {fmt(d['ssim'], 3)} | "
                     f"{wins} of {len(seeds)} seeds (PSNR) |")
    return '\n'.join(lines) if len(lines) > 2 else None


def first_reach(rs, metric, target):
    """The first evaluated iteration whose metric reaches target (None: never in this run)."""
    for r in sorted(rs, key=lambda r: r['step']):
        if r[metric] >= target:
            return r['step']
    return None


def claim_a(curves, last, labels, standard, cost):
    """Iterations (and seconds = iterations x the alone-timed cost) to reach the standard model's final mean."""
    targets = {m: statistics.fmean(r[m] for (lab, _), r in last.items() if lab == standard) for m in METRICS}
    lines = [f"| method | to PSNR {targets['psnr']:.2f} dB: iterations | seconds | to SSIM {targets['ssim']:.3f}: "
             f"iterations | seconds |", '|---|---|---|---|---|']
    claims = []
    runs = by(curves, 'label', 'seed')
    for label in labels:
        cells = [label]
        for m in METRICS:
            its = [first_reach(rs, m, targets[m]) for (lab, _), rs in runs.items() if lab == label]
            reached = [i for i in its if i is not None]
            never = len(its) - len(reached)
            s_per = cost.get(label)
            mean_its = statistics.fmean(reached) if reached else None
            if reached:
                txt = fmt(reached, 0) + (f', {never} of {len(its)} seeds never' if never else '')
                secs = fmt([i * s_per for i in reached], 0) if s_per else 'not timed'
            else:
                txt, secs = f'never ({len(its)} seeds)', '–'
            cells += [txt, secs]
            claims.append(dict(claim='a', metric=m, target=round(targets[m], 4), label=label, seeds=len(its),
                               reached=len(reached), iters_mean=mean_its or '', iters_min=min(reached, default=''),
                               iters_max=max(reached, default=''), s_per_iter=s_per or '',
                               seconds_mean=mean_its * s_per if mean_its and s_per else ''))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines), claims


def equal_time(curves, last, labels, standard, cost):
    """Each method at the standard model's final wall-clock: its latest evaluation whose seconds (iterations x the
    alone-timed cost) do not exceed the standard runs' final seconds, and the standard model's latest evaluation
    within that method's seconds; mean and spread over seeds."""
    if standard not in cost:
        return None, []
    std_final = max(r['step'] for (lab, _), r in last.items() if lab == standard)
    budget = std_final * cost[standard]
    lines = [f"| method | iterations within {budget:.0f} s | seconds | PSNR (dB) | SSIM |", '|---|---|---|---|---|']
    claims, paired = [], set()

    def latest(label, seconds):  # the label's latest evaluated iteration within `seconds`, and its rows
        its = max((r['step'] for r in curves if r['label'] == label and r['step'] * cost[label] <= seconds + 1e-9),
                  default=None)
        return its, [r for r in curves if r['label'] == label and r['step'] == its]

    def row(name, its, rs):
        return (f"| {name} | {its} | {its * cost[rs[0]['label']]:.0f} | {fmt([r['psnr'] for r in rs], 2)} | "
                f"{fmt([r['ssim'] for r in rs], 3)} |")
    for label in labels:
        if label not in cost:
            continue
        its, rs = latest(label, budget)
        if not rs:
            continue
        lines.append(row(label, its, rs))
        for m in METRICS:
            claims.append(dict(claim='equal_time', metric=m, target=round(budget, 1), label=label, seeds=len(rs),
                               iters_mean=its, s_per_iter=cost[label], seconds_mean=its * cost[label],
                               value_mean=statistics.fmean(r[m] for r in rs)))
        if label != standard:
            # evaluations are a grid, so the method's last one may fall well short of the budget: the standard model
            # within the method's own seconds makes the like-for-like pair
            s_its, s_rs = latest(standard, its * cost[label])
            if s_rs and s_its not in paired and s_its != std_final:
                paired.add(s_its)
                lines.append(row(f'{standard}, within {label}\'s {its * cost[label]:.0f} s', s_its, s_rs))
    return '\n'.join(lines), claims


def claim_b(steps_rows, labels, standard, min_steps=1):
    """Fewest sampling steps (>= min_steps) at which a method's mean over seeds reaches the standard model's best mean
    over the step counts >= min_steps."""
    steps_rows = [r for r in steps_rows if r['steps'] >= min_steps]
    mean = {k: {m: statistics.fmean(r[m] for r in rs) for m in METRICS} | {'n_seeds': len(rs)}
            for k, rs in by(steps_rows, 'label', 'sampler', 'steps').items()}
    # compare means over the same number of seeds: step counts run for fewer seeds (the long ones) are left out
    full = max(v['n_seeds'] for v in mean.values())
    mean = {k: v for k, v in mean.items() if v['n_seeds'] == full}
    best = {m: max((v[m], s, n) for (lab, s, n), v in mean.items() if lab == standard) for m in METRICS}
    lines = [f"| method | sampler | fewest steps to the standard's best PSNR {best['psnr'][0]:.2f} dB "
             f"({best['psnr'][1]} {best['psnr'][2]}) | to its best SSIM {best['ssim'][0]:.3f} "
             f"({best['ssim'][1]} {best['ssim'][2]}) |", '|---|---|---|---|']
    claims = []
    for label in labels:
        for sampler in sorted({s for (lab, s, _) in mean if lab == label}):
            cells = [label, sampler]
            for m in METRICS:
                ok = sorted(n for (lab, s, n), v in mean.items()
                            if lab == label and s == sampler and v[m] >= best[m][0])
                cells.append(str(ok[0]) if ok else 'never')
                claims.append(dict(claim='b', metric=m, target=round(best[m][0], 4), label=label, sampler=sampler,
                                   min_steps=min_steps, fewest_steps=ok[0] if ok else ''))
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines), claims


def errorbar_lines(ax, groups, x_of, metric):
    """One line per label: mean over seeds at each x, bars from min to max."""
    for label, rs in groups.items():
        pts = defaultdict(list)
        for r in rs:
            pts[x_of(r)].append(r[metric])
        xs = sorted(pts)
        stats = [spread(pts[x]) for x in xs]
        ys = [s[0] for s in stats]
        below = [max(0.0, y - s[2]) for y, s in zip(ys, stats)]  # never negative: float rounding of one seed
        above = [max(0.0, s[3] - y) for y, s in zip(ys, stats)]
        ax.errorbar(xs, ys, yerr=[below, above],
                    fmt='o-', ms=3, capsize=3, label=f'{label} ({len({r["seed"] for r in rs})} seeds)')


def plot_curves(curves, labels, cost, out_png):
    from matplotlib.figure import Figure
    groups = {lab: [r for r in curves if r['label'] == lab] for lab in labels}
    xs = [('iteration', lambda r: r['step'])]
    if all(lab in cost for lab in labels):
        xs.append(('seconds (iterations x alone-timed s/iteration)', lambda r: r['step'] * cost[r['label']]))
    fig = Figure(figsize=(11, 3.8 * len(xs)))
    axes = fig.subplots(len(xs), 2, squeeze=False)
    for row, (xlabel, x_of) in zip(axes, xs):
        for ax, m in zip(row, METRICS):
            errorbar_lines(ax, groups, x_of, m)
            ax.axhline(curves[0][f'bicubic_{m}'], ls='--', color='gray', lw=1, label='bicubic')
            ax.set(xlabel=xlabel, ylabel=m.upper(), title=f'held-out {m.upper()} (n={curves[0]["n"]}), mean, min-max')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def plot_steps(steps_rows, labels, out_png):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 3.8))
    samplers = sorted({r['sampler'] for r in steps_rows})
    groups = {f'{lab} {s}': [r for r in steps_rows if r['label'] == lab and r['sampler'] == s]
              for lab in labels for s in samplers}
    groups = {k: v for k, v in groups.items() if v}
    for ax, m in zip(fig.subplots(1, 2), METRICS):
        errorbar_lines(ax, groups, lambda r: r['steps'], m)
        ax.axhline(steps_rows[0][f'bicubic_{m}'], ls='--', color='gray', lw=1, label='bicubic')
        ticks = sorted({r['steps'] for r in steps_rows})
        ax.set(xscale='log', xticks=ticks, xticklabels=[str(t) for t in ticks], xlabel='sampling steps',
               ylabel=m.upper(), title=f'{m.upper()} vs sampling steps (n={steps_rows[0]["n"]}), mean, min-max')
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--curves', required=True, help='common.py collect --all CSV')
    ap.add_argument('--steps', help='sweep.py --sweep steps CSV')
    ap.add_argument('--cost', help='common.py collect CSV of short runs timed alone (label, step, train_s)')
    ap.add_argument('--standard', default='standard', help='label of the standard model')
    ap.add_argument('--min-steps', type=int, default=5, help='claim (b) also among step counts >= this (a 2-step '
                    'sampler returns little more than the blurry posterior mean, which PSNR / SSIM favour)')
    ap.add_argument('--out', required=True, help='prefix of the PNGs and OUT_claims.csv')
    a = ap.parse_args(argv)
    curves = read(a.curves)
    labels = list(dict.fromkeys(r['label'] for r in curves))
    cost = {}
    if a.cost:
        with open(a.cost, newline='') as f:
            per_iter = {r['label']: float(r['train_s']) / int(r['step']) for r in csv.DictReader(f)}
        for label in labels:
            prefixes = [p for p in per_iter if label.startswith(p)]
            if prefixes:
                cost[label] = per_iter[max(prefixes, key=len)]
        print('cost per iteration, timed alone: ' + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in cost.items()) + '\n')
    table, last = final_table(curves, labels)
    print('Final held-out metrics (mean ± std over seeds, min–max):\n\n' + table + '\n')
    tp = paired_table(last, labels, a.standard)
    if tp:
        print('Paired by seed, at the final iteration (mean ± std (min–max) of the differences):\n\n' + tp + '\n')
    ta, claims = claim_a(curves, last, labels, a.standard, cost)
    print("Claim (a), iterations / seconds to the standard model's final mean (first evaluation that reaches it; "
          'mean ± std (min–max) over the seeds that reach it):\n\n' + ta + '\n')
    te, ce = equal_time(curves, last, labels, a.standard, cost)
    if te:
        print("At equal wall-clock: each method's latest evaluation within the standard model's final seconds, and "
              "the standard model's within that method's seconds (iterations x the alone-timed cost; mean ± std "
              '(min–max) over seeds):\n\n' + te + '\n')
        claims += ce
    plot_curves(curves, labels, cost, a.out + '_curves.png')
    if a.steps:
        steps_rows = read(a.steps)
        for min_steps in sorted({1, a.min_steps}):
            tb, cb = claim_b(steps_rows, list(dict.fromkeys(r['label'] for r in steps_rows)), a.standard, min_steps)
            print(f"Claim (b), sampling steps >= {min_steps} (mean over seeds at each step count run for every seed):"
                  "\n\n" + tb + '\n')
            claims += cb
        plot_steps(steps_rows, list(dict.fromkeys(r['label'] for r in steps_rows)), a.out + '_steps.png')
    keys = list(dict.fromkeys(k for c in claims for k in c))
    with open(a.out + '_claims.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(claims)
    print(f'wrote {a.out}_curves.png, {a.out}_claims.csv' + (f', {a.out}_steps.png' if a.steps else ''))


if __name__ == '__main__':
    main()
