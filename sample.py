"""
Sample from trained checkpoints (EMA weights).

Super-resolution (SR3 / DREAM):
    python sample.py --ckpt out/sr/ckpt.pt --input lr_images/ --out sr_out --steps 100 [--sampler ddim]
Relay Diffusion, two stages (stage 1 EDM at L, nearest upsample, stage 2 relay/blur sampler at H):
    python sample.py --relay --ckpt-first out/r1/ckpt.pt --ckpt-second out/r2/ckpt.pt --n 16 --out faces
Relay stage 2 alone, continuing given low-resolution images:
    python sample.py --relay --ckpt-second out/r2/ckpt.pt --input lr_images/ --out faces
Writes one PNG per image (input file names kept) and grid.png.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import relay
from diffusion import GaussianDiffusion, beta_schedule
from train import Parser, TrainError, load_model, parse_task, pick_device, pick_dtype


def get_args(argv=None):
    p = Parser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ckpt', help='SR checkpoint')
    p.add_argument('--input', help='low-resolution image file or folder')
    p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=100, help='SR sampling steps')
    p.add_argument('--sampler', default='ddpm', choices=['ddpm', 'ddim'])
    p.add_argument('--relay', action='store_true')
    p.add_argument('--ckpt-first', help='relay stage 1 (relayL) checkpoint')
    p.add_argument('--ckpt-second', help='relay stage 2 (relayL_H) checkpoint')
    p.add_argument('--n', type=int, default=16, help='images to generate (two-stage relay)')
    p.add_argument('--steps-first', type=int, default=40)
    p.add_argument('--steps-second', type=int, default=40)
    p.add_argument('--truncation-sigma', type=float, default=0.9)
    p.add_argument('--truncation-t', type=float, default=None, help="default: the stage-2 model's --prob-length")
    p.add_argument('--s-block', type=float, default=0.15)
    p.add_argument('--s-noise', type=float, default=0.2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    a = p.parse_args(argv)
    for k in ('steps', 'n', 'steps_first', 'steps_second', 'batch_size'):
        if getattr(a, k) <= 0:
            raise TrainError(f'--{k.replace("_", "-")} must be positive')
    if a.relay and not a.ckpt_second:
        raise TrainError('--relay needs --ckpt-second (and --ckpt-first, or --input low-res images)')
    if a.relay and not (a.ckpt_first or a.input):
        raise TrainError('--relay needs --ckpt-first (two-stage generation) or --input (stage 2 on given images)')
    if not a.relay and not (a.ckpt and a.input):
        raise TrainError('super-resolution needs --ckpt and --input (or use --relay)')
    return a


def read_inputs(path, size):
    """(names, images (N,3,size,size)) from a file or folder; one-line DataError for wrong sizes."""
    files = [path] if os.path.isfile(path) and not path.endswith('.zip') else data.list_images(path)
    names, imgs = [], []
    for f in files:
        x = data.load_image(f)
        if x.shape[-2:] != (size, size):
            raise data.DataError(f'{f}: image is {x.shape[-1]}x{x.shape[-2]}, the model expects {size}x{size} inputs')
        names.append(os.path.splitext(os.path.basename(str(f)))[0])
        imgs.append(x)
    return names, torch.stack(imgs)


def super_resolve(model, cfg, lr, steps, sampler='ddpm', generator=None, device='cpu', dtype=torch.float32):
    """LR batch (B,3,L,L) in [-1,1] -> SR batch (B,3,H,H): the bicubic-upsampled LR conditions the sampler."""
    hr = parse_task(cfg['task'])['hr']
    cond = data.resize(lr, hr).to(device)
    diff = GaussianDiffusion(model, beta_schedule(cfg['schedule'], cfg['timesteps'], cfg['beta_start'], cfg['beta_end']))
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        return diff.sample(cond, steps, sampler=sampler, generator=generator).float().cpu(), cond.cpu()


def relay_kwargs(a, cfg2):
    return dict(truncation_sigma=a.truncation_sigma, s_block=a.s_block, s_noise=a.s_noise,
                truncation_t=a.truncation_t if a.truncation_t is not None else cfg2['prob_length'],
                blur_sigma_max=cfg2['blur_sigma_max'])


def main(argv=None):
    try:
        a = get_args(argv)
        device = pick_device(a.device)
        dtype, _ = pick_dtype(a.dtype, device)
        gen = torch.Generator().manual_seed(a.seed)
        ac = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        if not a.relay:
            model, cfg = load_model(a.ckpt, device)
            if not cfg['task'].startswith('sr'):
                raise TrainError(f"{a.ckpt} is a {cfg['task']} checkpoint, not super-resolution (use --relay)")
            lo = parse_task(cfg['task'])['lr']
            names, lr = read_inputs(a.input, lo)
            outs, conds = [], []
            for i in tqdm(range(0, len(lr), a.batch_size), desc=f'super-resolving {len(lr)} images'):
                o, c = super_resolve(model, cfg, lr[i:i + a.batch_size], a.steps, a.sampler, gen, device, dtype)
                outs.append(o), conds.append(c)
            out, cond = torch.cat(outs), torch.cat(conds)
            grid = torch.stack([cond, out], 1).flatten(0, 1)  # bicubic | SR, one pair per row
            ncol = 2
        else:
            m2, cfg2 = load_model(a.ckpt_second, device)
            t2 = parse_task(cfg2['task'])
            if t2['kind'] != 'relay2':
                raise TrainError(f"{a.ckpt_second} is a {cfg2['task']} checkpoint, not a relay stage 2 (relayL_H)")
            lo, hi = t2['lr'], t2['hr']
            D2, kw = relay.EDMPrecond(m2), relay_kwargs(a, cfg2)
            if a.input:
                names, lr = read_inputs(a.input, lo)
            else:
                m1, cfg1 = load_model(a.ckpt_first, device)
                if cfg1['task'] != f'relay{lo}':
                    raise TrainError(f"{a.ckpt_first} is a {cfg1['task']} checkpoint; stage 2 {cfg2['task']} needs relay{lo}")
                names, lr = [f'{i:05d}' for i in range(a.n)], []
                for i in tqdm(range(0, a.n, a.batch_size), desc='stage 1 (EDM)'):
                    z = torch.randn(min(a.batch_size, a.n - i), 3, lo, lo, generator=gen).to(device)
                    with ac:
                        lr.append(relay.edm_sampler(relay.EDMPrecond(m1), z, steps=a.steps_first, generator=gen).float().cpu())
                lr = torch.cat(lr).clamp(-1, 1)
            outs = []
            for i in tqdm(range(0, len(lr), a.batch_size), desc='stage 2 (relay)'):
                x_up = F.interpolate(lr[i:i + a.batch_size], scale_factor=hi // lo, mode='nearest').to(device)
                with ac:
                    outs.append(relay.relay_sampler(D2, x_up, steps=a.steps_second, block=hi // lo, generator=gen, **kw).float().cpu())
            out = torch.cat(outs)
            grid = torch.stack([F.interpolate(lr, scale_factor=hi // lo, mode='nearest'), out], 1).flatten(0, 1)
            ncol = 2
        for name, x in zip(names, out):
            data.save_image(x, os.path.join(a.out, f'{name}.png'))
        data.save_grid(grid, os.path.join(a.out, 'grid.png'), nrow=ncol * max(1, min(4, len(out) // 4)))
        print(f'wrote {len(out)} images and grid.png to {a.out}')
    except (TrainError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
