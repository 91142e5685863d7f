"""
Mean ± std (min-max) over seeds of a results CSV, grouped by some columns, as a markdown table.

    python experiments/summarize.py results/relay_diagnose.csv --by label s_block heun_noise truncation_sigma \
        --metrics psnr ssim flat_noise input_psnr bicubic_psnr

One row per group of equal values in the --by columns; n_seeds counts the distinct `seed` values in it. Prints to
stdout; the README's seed-spread tables are this script's output on the results files named beside them.
"""
import argparse
import csv
import statistics


def fmt(values, digits):
    m = statistics.fmean(values)
    if len(values) == 1:
        return f'{m:.{digits}f}'
    sd, lo, hi = statistics.stdev(values), min(values), max(values)
    return f'{m:.{digits}f} ± {sd:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})'


def summarize(rows, by, metrics):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(by, key), n_seeds=len({r.get('seed') for r in rs}))
        for m in metrics:
            vals = [float(r[m]) for r in rs if r.get(m) not in (None, '')]
            row[m] = fmt(vals, 3 if 'ssim' in m or 'noise' in m else 2) if vals else '-'
        out.append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('csv')
    ap.add_argument('--by', nargs='+', required=True)
    ap.add_argument('--metrics', nargs='+', default=['psnr', 'ssim'])
    a = ap.parse_args()
    table = summarize(list(csv.DictReader(open(a.csv))), a.by, a.metrics)
    cols = a.by + ['n_seeds'] + a.metrics
    print('| ' + ' | '.join(cols) + ' |')
    print('|' + '---|' * len(cols))
    for r in table:
        print('| ' + ' | '.join(str(r[c]) for c in cols) + ' |')


if __name__ == '__main__':
    main()
