"""Where the quick start's training step could get faster on this CPU: one `tiny` sr16_64 DREAM step (the quick-start
flags: residual, v; batch 8, as up to the v3 quick start; v4 uses the batch-4 row) under each lever, timed alone in
one run -> a CSV (median of rounds, with min-max).

    python experiments/tiny_speed.py --data data/faces_16_64 --out results/speed/tiny_levers.csv

Levers: channels_last, torch.compile (inductor on CPU, compile time excluded), mkldnn convolutions off, batch 4 and
2, one thread, and the `tiny_s2d` preset (space-to-depth in place of tiny's 64x64 level). Run it with nothing else on
the machine: it reports seconds, and ratios to the default row.
"""
import argparse
import csv
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from tasks import build_model, compute_loss  # noqa: E402
from trainset import datasets  # noqa: E402

QUICK = ('--task sr16_64 --model tiny --batch-size 8 --lr 1e-3 --residual --pred v --project --dream '
         '--temperature 0.6 --out /tmp/tiny_speed').split()


def time_step(a, data, channels_last=False, compile_=False, mkldnn=True, threads=None, rounds=5, per_round=5):
    old_threads, old_mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(threads or old_threads)
    torch.backends.mkldnn.enabled = mkldnn
    try:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(a.task_info, a.model, False, a.norm_groups).to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        net = torch.compile(model) if compile_ else model
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(per_round):
            idx = torch.randint(len(data), (a.batch_size,), generator=g).tolist()
            items = [data[i] for i in idx]
            batches.append({k: torch.stack([it[k] for it in items]).to(memory_format=fmt)
                            for k in items[0] if torch.is_tensor(items[0][k])})

        def step(b):
            compute_loss(net, b, a).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for b in batches:  # warm-up (and compilation)
            step(b)
        ts = []
        for _ in range(rounds):
            t = time.perf_counter()
            for b in batches:
                step(b)
            ts.append((time.perf_counter() - t) / per_round)
        return ts
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.mkldnn.enabled = old_mkldnn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', required=True, help='a data.py prepare folder (sr16_64)')
    ap.add_argument('--out', required=True)
    ap.add_argument('--no-compile', action='store_true', help='skip the torch.compile row')
    ap.add_argument('--rounds', type=int, default=5, help='timed rounds per lever (the median is reported)')
    ap.add_argument('--per-round', type=int, default=5, help='steps per round')
    args = ap.parse_args()
    a = train.get_args(QUICK + ['--data', args.data])
    data = datasets(a)[0]
    b4 = train.get_args(QUICK + ['--data', args.data, '--batch-size', '4'])
    b2 = train.get_args(QUICK + ['--data', args.data, '--batch-size', '2'])
    s2d = train.get_args(QUICK + ['--data', args.data, '--model', 'tiny_s2d'])
    levers = [(f'default (fp32, {torch.get_num_threads()} threads)', a, {}),
              ('channels_last', a, dict(channels_last=True)),
              ('mkldnn off', a, dict(mkldnn=False)), ('batch 4', b4, {}), ('batch 2', b2, {}),
              ('one thread', a, dict(threads=1)),
              ('one thread, batch 4', b4, dict(threads=1)), ('tiny_s2d preset', s2d, {})]
    if not args.no_compile:
        levers.insert(2, ('torch.compile', a, dict(compile_=True)))
    rows = []
    for name, cfg, kw in levers:
        ts = time_step(cfg, data, rounds=args.rounds, per_round=args.per_round, **kw)
        rows.append(dict(lever=name, batch=cfg.batch_size, threads=kw.get('threads', torch.get_num_threads()),
                         s_per_step=round(statistics.median(ts), 4), s_min=round(min(ts), 4), s_max=round(max(ts), 4)))
        print(f"{name:<28} {rows[-1]['s_per_step']:.3f} s/step ({rows[-1]['s_min']:.3f}-{rows[-1]['s_max']:.3f})",
              flush=True)
    base = rows[0]['s_per_step']
    for r in rows:
        r['vs_default'] = round(r['s_per_step'] / base, 3)
        r['img_per_s'] = round(r['batch'] / r['s_per_step'], 2)
    with open(args.out, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
