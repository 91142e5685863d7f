"""
Relay stage 2 vs a restart-from-noise SR3 stage 2 at equal network evaluations (NFE), on held-out faces.

    python experiments/relay_compare.py --relay runs/relay2/ckpt.pt --relay-dream runs/relay2_dream/ckpt.pt \
        --sr runs/std/ckpt.pt --data /path/faces_16_64 --n 50 --relay-steps 40 --out results/relay

For each held-out HR image (DATA/val/hr_H): the relay model continues the nearest-upsampled tile-mean
(box) low-res image through the blur sampler (s_block 0.15 and 0); the SR3 model restarts from pure noise,
conditioned on the bicubic-upsampled bicubic low-res image (its training input), with as many DDPM / DDIM
steps as the relay sampler used network evaluations. PSNR / SSIM against the HR image. Writes OUT.json,
OUT.csv and OUT.png (rows: LR | relay | relay DREAM | SR3 DDPM | HR).
"""
import argparse
import csv
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import metrics  # noqa: E402
import relay  # noqa: E402
from checkpoint import load_model  # noqa: E402
from tasks import heldout, parse_task, relay_inputs, relay_noise, sample_and_score  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
p.add_argument('--relay', required=True)
p.add_argument('--relay-dream')
p.add_argument('--sr', required=True)
p.add_argument('--data', required=True)
p.add_argument('--n', type=int, default=50)
p.add_argument('--relay-steps', type=int, default=40)
p.add_argument('--s-noise', type=float, default=None, help="relay sampler's share of fresh noise (default: each run's)")
p.add_argument('--seed', type=int, default=0)
p.add_argument('--out', default='results/relay_compare')
a = p.parse_args()
os.makedirs(os.path.dirname(a.out) or '.', exist_ok=True)

m_relay, c_relay = load_model(a.relay)
t = parse_task(c_relay['task'])
val = data.SRPairs(data.split_root(a.data)[1] or a.data, t['lr'], t['hr'])
batch = heldout(val, a.n)
hr = batch['hr']
x_up, bicubic_box = relay_inputs(hr, t['block'])

calls = [0]
def counted(D):
    def f(x, s):
        calls[0] += 1
        return D(x, s)
    return f

rows, pics = [], {'LR (box, nearest up)': x_up}
base = {f'{k}_psnr': metrics.psnr(x, hr).mean().item() for k, x in (('input', x_up), ('bicubic', bicubic_box))}
# the SR3 model's own baseline: bicubic-up of the bicubic (PIL) LR it is conditioned on
sr_bicubic = dict(sr3_input_bicubic_psnr=metrics.psnr(batch['sr'], hr).mean().item())


def score(name, out, nfe, secs, s_noise=''):
    res = metrics.mean_metrics(metrics.compute_metrics(out, hr))
    rows.append(dict(method=name, seed=c_relay['seed'], sample_seed=a.seed, nfe=nfe, s_noise=s_noise, n=len(hr),
                     psnr=res['psnr'], ssim=res['ssim'], flat_noise=res['flat_noise'], **base, **sr_bicubic,
                     wall_s=round(secs, 1)))
    print(json.dumps(rows[-1]), flush=True)

relays = [('relay', a.relay, 0.15), ('relay, no block noise', a.relay, 0.0)]
if a.relay_dream:
    relays.append(('relay DREAM', a.relay_dream, 0.15))
for name, ck, s_block in relays:
    m, cfg = load_model(ck)
    calls[0], t0 = 0, time.time()
    s_noise = a.s_noise if a.s_noise is not None else relay_noise(cfg)[0]
    out = relay.relay_sampler(counted(relay.EDMPrecond(m)), x_up, steps=a.relay_steps, block=t['block'],
                              s_block=s_block, s_noise=s_noise, blur_sigma_max=cfg['blur_sigma_max'],
                              truncation_t=cfg['prob_length'],
                              truncation_sigma=relay.default_truncation_sigma(cfg['prob_length']),
                              generator=torch.Generator().manual_seed(a.seed)).float()
    nfe = calls[0]  # one batched call per network evaluation
    score(name, out, nfe, time.time() - t0, s_noise)
    pics.setdefault(name, out)

m_sr, c_sr = load_model(a.sr)
nfe = rows[0]['nfe']
for sampler in ('ddpm', 'ddim'):
    t0 = time.time()
    res, grid, ncol = sample_and_score(m_sr, c_sr, batch, nfe, sampler=sampler,
                                                generator=torch.Generator().manual_seed(a.seed))
    out = grid.view(len(hr), ncol, *grid.shape[1:])[:, 2]
    score(f'SR3 restart from noise ({sampler})', out, nfe, time.time() - t0)
    pics.setdefault(f'SR3 {sampler}', out)
pics['HR'] = hr

with open(a.out + '.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
k = min(8, len(hr))
cols = [pics[key][:k] for key in pics]
data.save_grid(torch.stack(cols, 0).flatten(0, 1), a.out + '.png', nrow=k)
json.dump(dict(rows=rows, columns_of_png=list(pics), images=k), open(a.out + '.json', 'w'), indent=1)
print(f'wrote {a.out}.csv/.json/.png; grid rows: ' + ' | '.join(pics))
