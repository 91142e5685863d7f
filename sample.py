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
from tqdm import tqdm

import data
import relay
from checkpoint import load_model
from runtime import Parser, UsageError, autocast, make_generator, pick_device, pick_dtype
from tasks import make_diffusion, nearest_up, parse_task, relay_noise, relay_projection, sr_sampling


def get_args(argv=None):
    p = Parser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ckpt', help='SR checkpoint')
    p.add_argument('--input', help='low-resolution image file or folder')
    p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=100, help='SR sampling steps')
    p.add_argument('--sampler', default='ddpm', choices=['ddpm', 'ddim'])
    p.add_argument('--temperature', type=float, default=None,
                   help="SR: scale of the noise added after x_T (default: the run's --temperature, 1 = DDPM as written)")
    p.add_argument('--project-smooth', type=float, default=None,
                   help="SR and relay stage 2, with the run's --project (or --project): the correction's smoothness "
                        "(default: the run's; 0 = the pseudo-inverse)")
    p.add_argument('--project', action=argparse.BooleanOptionalAction, default=None,
                   help="relay stage 2: the tile-mean consistency step on every denoised estimate (default: the run's "
                        "--project; --no-project turns it off)")
    p.add_argument('--relay', action='store_true')
    p.add_argument('--ckpt-first', help='relay stage 1 (relayL) checkpoint')
    p.add_argument('--ckpt-second', help='relay stage 2 (relayL_H) checkpoint')
    p.add_argument('--n', type=int, default=16, help='images to generate (two-stage relay)')
    p.add_argument('--steps-first', type=int, default=40)
    p.add_argument('--steps-second', type=int, default=40)
    p.add_argument('--truncation-sigma', type=float, default=None,
                   help="where stage 2 starts (default 0.9, RDM's, or lower if the model's blur process ends lower)")
    p.add_argument('--truncation-t', type=float, default=None, help="default: the stage-2 model's --prob-length")
    p.add_argument('--s-block', type=float, default=None,
                   help="relay stage 2: block noise at sampling (default: the stage-2 run's --block-noise, RDM 0.15)")
    p.add_argument('--s-noise', type=float, default=None,
                   help="relay stage 2: share of fresh noise per step (default: the stage-2 run's --s-noise, RDM 0.2)")
    p.add_argument('--heun-noise', default='reuse', choices=['reuse', 'fresh'],
                   help="relay stage 2: the corrector's noise, the predictor's again (ours) or a new draw (official)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--dtype', default='auto', choices=['auto', 'fp32', 'bf16'])
    a = p.parse_args(argv)
    for k in ('steps', 'n', 'steps_first', 'steps_second', 'batch_size'):
        if getattr(a, k) <= 0:
            raise UsageError(f'--{k.replace("_", "-")} must be positive')
    if a.relay and not a.ckpt_second:
        raise UsageError('--relay needs --ckpt-second (and --ckpt-first, or --input low-res images)')
    if a.relay and not (a.ckpt_first or a.input):
        raise UsageError('--relay needs --ckpt-first (two-stage generation) or --input (stage 2 on given images)')
    if not a.relay and not (a.ckpt and a.input):
        raise UsageError('super-resolution needs --ckpt and --input (or use --relay)')
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
    """LR batch (B,3,L,L) in [-1,1] -> SR batch (B,3,H,H): the bicubic-upsampled LR conditions the sampler.
    `generator` may live on the CPU or on the device: diffusion.py draws where the generator lives."""
    hr = parse_task(cfg['task'])['hr']
    cond = data.resize(lr, hr).to(device)
    with autocast(torch.device(device), dtype):  # the run's --project / --project-smooth / --temperature
        out = make_diffusion(model, cfg).sample(cond, steps, sampler=sampler, generator=generator,
                                                **sr_sampling(cfg, lr.to(device)))
    return out.float().cpu(), cond.cpu()


def relay_kwargs(a, cfg2):
    truncation_t = a.truncation_t if a.truncation_t is not None else cfg2['prob_length']
    truncation_sigma = a.truncation_sigma if a.truncation_sigma is not None else \
        relay.default_truncation_sigma(cfg2['prob_length'])
    run_s_noise, run_s_block = relay_noise(cfg2)
    s_noise = a.s_noise if a.s_noise is not None else run_s_noise
    s_block = a.s_block if a.s_block is not None else run_s_block
    if not 0 <= s_noise <= 1 or not s_block >= 0:
        raise UsageError(f'--s-noise must be in [0, 1] and --s-block non-negative, got {s_noise} and {s_block}')
    projection = relay_projection(cfg2)  # the run's; --project / --no-project / --project-smooth over it
    project, smooth = getattr(a, 'project', None), getattr(a, 'project_smooth', None)
    if project is not None:
        projection['project'] = project
    if smooth is not None:
        if not smooth >= 0:
            raise UsageError(f'--project-smooth must be >= 0, got {smooth}')
        if project is False:
            raise UsageError('--project-smooth sets the projection that --no-project turns off: give one of them')
        projection.update(project=True, project_smooth=smooth)  # as for SR: a smoothness turns it on
    return dict(truncation_sigma=truncation_sigma, s_block=s_block, s_noise=s_noise, **projection,
                truncation_t=truncation_t, blur_sigma_max=cfg2['blur_sigma_max'], heun_noise=a.heun_noise)


def sample_sr(a, device, dtype):
    """Super-resolve --input with --ckpt -> (names, outputs, grid, grid columns)."""
    model, cfg = load_model(a.ckpt, device)
    if not cfg['task'].startswith('sr'):
        raise UsageError(f"{a.ckpt} is a {cfg['task']} checkpoint, not super-resolution (use --relay)")
    if a.temperature is not None:
        if not a.temperature >= 0:
            raise UsageError(f'--temperature must be >= 0, got {a.temperature}')
        cfg = dict(cfg, temperature=a.temperature)
    if a.project_smooth is not None:
        if not a.project_smooth >= 0:
            raise UsageError(f'--project-smooth must be >= 0, got {a.project_smooth}')
        cfg = dict(cfg, project_smooth=a.project_smooth)
    if cfg.get('temperature', 1.0) < 1 and a.sampler == 'ddpm' and a.steps < 50:
        # measured (README "What made it work"): temperature 0.6 with 5-20 DDPM steps leaves more noise, not less
        print(f"warning: temperature {cfg['temperature']} with {a.steps} DDPM steps is off the measured range "
              f"(>= 50 steps); use more steps or --temperature 1", file=sys.stderr)
    names, lr = read_inputs(a.input, parse_task(cfg['task'])['lr'])
    generator = make_generator(a.seed, device)  # on the sampling device, like the relay path
    outs, conds = [], []
    for i in tqdm(range(0, len(lr), a.batch_size), desc=f'super-resolving {len(lr)} images'):
        out, cond = super_resolve(model, cfg, lr[i:i + a.batch_size], a.steps, a.sampler, generator, device, dtype)
        outs.append(out)
        conds.append(cond)
    out = torch.cat(outs)
    grid = torch.stack([torch.cat(conds), out], 1).flatten(0, 1)  # bicubic | SR, one pair per row
    return names, out, grid, 2


def stage_one(a, second_task, lo, device, dtype, generator):
    """--n images at L pixels from the stage-1 EDM model (--ckpt-first), in [-1, 1] on the CPU."""
    model, cfg = load_model(a.ckpt_first, device)
    if cfg['task'] != f'relay{lo}':
        raise UsageError(f"{a.ckpt_first} is a {cfg['task']} checkpoint; stage 2 {second_task} needs relay{lo}")
    D1 = relay.EDMPrecond(model)
    low = []
    for i in tqdm(range(0, a.n, a.batch_size), desc='stage 1 (EDM)'):
        latents = torch.randn(min(a.batch_size, a.n - i), 3, lo, lo, generator=generator, device=device)
        with autocast(device, dtype):
            low.append(relay.edm_sampler(D1, latents, steps=a.steps_first, generator=generator).float().cpu())
    return torch.cat(low).clamp(-1, 1)


def sample_relay(a, device, dtype):
    """Relay stage 2 (--ckpt-second) on --input or on stage-1 samples -> (names, outputs, grid, grid columns)."""
    m2, cfg2 = load_model(a.ckpt_second, device)
    t2 = parse_task(cfg2['task'])
    if t2['kind'] != 'relay2':
        raise UsageError(f"{a.ckpt_second} is a {cfg2['task']} checkpoint, not a relay stage 2 (relayL_H)")
    generator = make_generator(a.seed, device)  # the relay samplers draw their noise on the images' device
    if a.input:
        names, lr = read_inputs(a.input, t2['lr'])
    else:
        lr = stage_one(a, cfg2['task'], t2['lr'], device, dtype, generator)
        names = [f'{i:05d}' for i in range(a.n)]
    D2 = relay.EDMPrecond(m2)
    kwargs = relay_kwargs(a, cfg2)
    outs = []
    for i in tqdm(range(0, len(lr), a.batch_size), desc='stage 2 (relay)'):
        x_up = nearest_up(lr[i:i + a.batch_size], t2['block']).to(device)
        with autocast(device, dtype):
            out = relay.relay_sampler(D2, x_up, steps=a.steps_second, block=t2['block'], generator=generator, **kwargs)
        outs.append(out.float().cpu())
    out = torch.cat(outs)
    grid = torch.stack([nearest_up(lr, t2['block']), out], 1).flatten(0, 1)  # stage-1 / input | stage 2
    return names, out, grid, 2


def main(argv=None):
    try:
        a = get_args(argv)
        device = pick_device(a.device)
        dtype, _ = pick_dtype(a.dtype, device)
        if a.relay:
            names, out, grid, ncol = sample_relay(a, device, dtype)
        else:
            names, out, grid, ncol = sample_sr(a, device, dtype)
        for name, x in zip(names, out):
            data.save_image(x, os.path.join(a.out, f'{name}.png'))
        data.save_grid(grid, os.path.join(a.out, 'grid.png'), nrow=ncol * max(1, min(4, len(out) // 4)))
        print(f'wrote {len(out)} images and grid.png to {a.out}')
    except (UsageError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
