"""
Sample from trained models (EMA weights): your own checkpoints, or the shipped ones in pretrained/.

The demos, with the shipped models (no other flag needed):
    python sample.py --relay                    # 16 generated faces -> samples/relay/, grid samples/relay_grid.png
    python sample.py --input my_photo.jpg       # -> samples/sr/, grid samples/sr_grid.png, PSNR printed
An --input of exactly the model's low resolution (16x16) is super-resolved; a larger one is taken as a
high-resolution face: centre-cropped square, resized to the model's H, bicubic-downsampled to L, super-resolved,
and shown beside bicubic and the original (grid columns LR | bicubic | SR | original), PSNR against the original.

Your own checkpoints:
    python sample.py --ckpt out/sr/ckpt.pt --input lr_images/ --out sr_out --steps 100 [--sampler ddim [--eta E]]
    python sample.py --relay --ckpt-first out/r1/ckpt.pt --ckpt-second out/r2/ckpt.pt --n 16 --out faces
    python sample.py --relay --ckpt-second out/r2/ckpt.pt --input lr_images/ --out faces   # stage 2 alone
    python sample.py --relay --ckpt-second pretrained/relay64_256.pt --input faces64/    # shipped 64 -> 256 stage 2
Writes one PNG per image as its batch finishes (DIR/a/x.jpg -> OUT/a/x.png: the relative path is kept), and a grid
of the first 16 beside the folder, OUT_grid.png (--grid), so that evaluate.py --pred OUT scores the samples only.
"""
import argparse
import os
import re
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import metrics
import relay
from checkpoint import load_model
from runtime import Parser, UsageError, autocast, make_generator, pick_device, pick_dtype
from tasks import make_diffusion, nearest_up, parse_task, relay_noise, relay_projection, sr_sampling

# The shipped models: pretrained/ beside this file, or the folder named by --pretrained-dir / this variable.
PRETRAINED_ENV = 'DREAM_RELAY_PRETRAINED'
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrained')
RELAY_FIRST, RELAY_SECOND = 'relay16.pt', 'relay16_64.pt'
# Default sampling steps, for the shipped models and one's own: the steps of the training runs' evaluations (the
# held-out scores of pretrained/README.md), within issue 32's budget of 60 s per demo of 16 faces on 2 CPU cores
# (measured with tiny at 64x64: SR 100 steps 13.5 s, relay 40 + 40 steps 6.3 s of one core's time).
SR_STEPS = 100
RELAY_STEPS = 40
GRID_ROWS = 16  # the grid shows the first 16 images


def get_args(argv=None):
    p = Parser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ckpt', help='SR checkpoint (default: a shipped SR model picked from the input size)')
    p.add_argument('--input', help='image file or folder: low-resolution inputs, or high-resolution faces (SR)')
    p.add_argument('--out', help='output folder (default samples/sr, or samples/relay with --relay)')
    p.add_argument('--grid', help='grid PNG of the first 16 images (default: OUT_grid.png, beside the folder)')
    p.add_argument('--pretrained-dir', default=os.environ.get(PRETRAINED_ENV, PRETRAINED_DIR),
                   help=f'where the shipped models are (default ${PRETRAINED_ENV}, else pretrained/)')
    p.add_argument('--steps', type=int, default=None,
                   help=f"SR sampling steps (default {SR_STEPS}); at most the run's --timesteps. With --relay: "
                        "both stages' steps, unless --steps-first / --steps-second say otherwise")
    p.add_argument('--sampler', default='ddpm', choices=['ddpm', 'ddim'])
    p.add_argument('--eta', type=float, default=None, help='DDIM: share of fresh noise per step (default 0)')
    p.add_argument('--temperature', type=float, default=None,
                   help="SR: scale of the noise added after x_T (default: the run's --temperature, 1 = DDPM as "
                        "written); with --sampler ddim it needs --eta > 0")
    p.add_argument('--project', action=argparse.BooleanOptionalAction, default=None,
                   help="SR: project every x0 estimate onto the images whose bicubic downsample is the input; relay "
                        "stage 2: onto the images whose tile means are the input's (default: the run's --project)")
    p.add_argument('--project-smooth', type=float, default=None,
                   help="SR and relay stage 2: the projection's smoothness (default: the run's; 0 = the "
                        "pseudo-inverse); turns the projection on")
    p.add_argument('--relay', action='store_true')
    p.add_argument('--ckpt-first', help=f'relay stage 1 (relayL) checkpoint (default: shipped {RELAY_FIRST})')
    p.add_argument('--ckpt-second', help=f'relay stage 2 (relayL_H) checkpoint (default: shipped {RELAY_SECOND})')
    p.add_argument('--n', type=int, default=16, help='images to generate (two-stage relay)')
    p.add_argument('--steps-first', type=int, default=None,
                   help=f'relay stage 1 (EDM Heun) steps (default --steps, else {RELAY_STEPS})')
    p.add_argument('--steps-second', type=int, default=None,
                   help=f'relay stage 2 (blur, 2nd order) steps (default --steps, else {RELAY_STEPS})')
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
        if getattr(a, k) is not None and getattr(a, k) <= 0:
            raise UsageError(f'--{k.replace("_", "-")} must be positive')
    check_sr_flags(a)
    if a.relay:
        pick_relay_models(a)
    elif not a.input:
        raise UsageError('super-resolution needs --input (a photo or a folder; or use --relay to generate faces)')
    a.out = a.out or os.path.join('samples', 'relay' if a.relay else 'sr')
    a.grid = a.grid or os.path.normpath(a.out) + '_grid.png'
    return a


def check_sr_flags(a):
    """Flags that would do nothing are refused: SR flags with --relay, --eta with DDPM, --temperature with DDIM at
    eta 0 (no noise to scale), --project-smooth with --no-project. (--project / --project-smooth act on both.)"""
    sr_only = {'--ckpt': a.ckpt, '--eta': a.eta, '--temperature': a.temperature}
    sr_flags = [flag for flag, value in sr_only.items() if value is not None]
    if a.relay and sr_flags:
        raise UsageError(f'{sr_flags[0]} acts on super-resolution only, not on --relay')
    if a.eta is not None and a.sampler != 'ddim':
        raise UsageError('--eta is the DDIM sampler\'s: add --sampler ddim')
    if a.eta is not None and not 0 <= a.eta <= 1:
        raise UsageError(f'--eta must be in [0, 1], got {a.eta}')
    if a.temperature is not None and not a.temperature >= 0:
        raise UsageError(f'--temperature must be >= 0, got {a.temperature}')
    if a.temperature is not None and a.sampler == 'ddim' and not a.eta:
        raise UsageError('--temperature scales the noise DDIM adds, and at --eta 0 it adds none: give --eta > 0')
    if a.project_smooth is not None and not a.project_smooth >= 0:
        raise UsageError(f'--project-smooth must be >= 0, got {a.project_smooth}')
    if a.project_smooth is not None and a.project is False:
        raise UsageError('--project-smooth sets the projection that --no-project turns off: give one of them')


def shipped(a, name):
    """The path of a shipped model; one line if it is not there."""
    path = os.path.join(a.pretrained_dir, name)
    if not os.path.isfile(path):
        raise UsageError(f'{path}: no such shipped model (give your own with --ckpt / --ckpt-first / --ckpt-second, '
                         f'or --pretrained-dir DIR)')
    return path


def pick_relay_models(a):
    """--relay with neither checkpoint: the shipped pair (stage 2 alone on --input)."""
    if not a.ckpt_first and not a.ckpt_second:
        a.ckpt_second = shipped(a, RELAY_SECOND)
        if not a.input:
            a.ckpt_first = shipped(a, RELAY_FIRST)
    if not a.ckpt_second:
        raise UsageError('--relay with --ckpt-first needs --ckpt-second')
    if not (a.ckpt_first or a.input):
        raise UsageError('--relay needs --ckpt-first (two-stage generation) or --input (stage 2 on given images)')
    a.steps_first = a.steps_first or a.steps or RELAY_STEPS
    a.steps_second = a.steps_second or a.steps or RELAY_STEPS


def pick_sr_model(pretrained_dir, size):
    """The shipped srL_H.pt for an input of `size` pixels (its shorter side): one whose L is the size, else the one
    with the largest H not above the size, else the one with the smallest H."""
    found = []
    for f in sorted(os.listdir(pretrained_dir)) if os.path.isdir(pretrained_dir) else []:
        m = re.fullmatch(r'sr(\d+)_(\d+)\.pt', f)
        if m:
            found.append((int(m[1]), int(m[2]), os.path.join(pretrained_dir, f)))
    if not found:
        raise UsageError(f'{pretrained_dir}: no shipped SR model (srL_H.pt) in it: give --ckpt, or --pretrained-dir')
    exact = [m for m in found if m[0] == size]
    below = [m for m in found if m[1] <= size]
    if exact:
        return min(exact, key=lambda m: m[1])[2]
    if below:
        return max(below, key=lambda m: m[1])[2]
    return min(found, key=lambda m: m[1])[2]


# ----------------------------------------------------------------------------- inputs and outputs
def list_inputs(path):
    """[(name, file)] of an image file, folder or zip; name is the relative path without extension ('a/x' for
    DIR/a/x.jpg), the output is OUT/name.png. Two inputs with one name (x.png and x.jpg) are refused in one line."""
    if not os.path.exists(path):
        raise data.DataError(f'--input {path}: no such file or folder')
    files = [path] if os.path.isfile(path) and not path.endswith('.zip') else data.list_images(path)
    seen = {}
    for f in files:
        relative = os.path.basename(f) if f == path else os.path.relpath(f, path)
        name = os.path.splitext(relative)[0].replace(os.sep, '/')
        if name in seen:
            raise data.DataError(f'{seen[name]} and {f} would both be written as {name}.png: rename one')
        seen[name] = f
    return list(seen.items())


def batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def write_batch(out_dir, names, images):
    for name, x in zip(names, images):
        data.save_image(x, os.path.join(out_dir, f'{name}.png'))


def sr_input(x, f, lo, hi):
    """(lr (3,lo,lo), original (3,hi,hi) or None) of one image for a lo -> hi model: exactly lo x lo is a
    low-resolution input; a larger image is a high-resolution face: centre-cropped square, resized to hi (bicubic),
    bicubic-downsampled to lo, as `data.py prepare` builds the training pairs."""
    h, w = x.shape[-2:]
    if (h, w) == (lo, lo):
        return x, None
    if min(h, w) < lo:
        raise data.DataError(f'{f}: image is {w}x{h}, smaller than the model\'s {lo}x{lo} input')
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    original = x[:, top:top + s, left:left + s]
    if s != hi:
        original = data.resize(original, hi)
    return data.resize(original, lo), original


def super_resolve(model, cfg, lr, steps, sampler='ddpm', generator=None, device='cpu', dtype=torch.float32, eta=0.0):
    """LR batch (B,3,L,L) in [-1,1] -> SR batch (B,3,H,W): the bicubic-upsampled LR conditions the sampler, with the
    run's --project / --project-smooth / --temperature (tasks.sr_sampling, as in training's evaluation).
    `generator` may live on the CPU or on the device: diffusion.py draws where the generator lives."""
    hr = parse_task(cfg['task'])['hr']
    cond = data.resize(lr, hr).to(device)
    with autocast(torch.device(device), dtype):
        out = make_diffusion(model, cfg).sample(cond, steps, sampler=sampler, generator=generator, eta=eta,
                                                **sr_sampling(cfg, lr.to(device)))
    return out.float().cpu(), cond.cpu()


def sr_config(a, cfg):
    """The run's flags with this command's sampling options over them (each one acts, or is refused)."""
    if not cfg['task'].startswith('sr'):
        raise UsageError(f"{a.ckpt} is a {cfg['task']} checkpoint, not super-resolution (use --relay)")
    if a.steps > cfg['timesteps']:
        raise UsageError(f"--steps {a.steps}: the model was trained with {cfg['timesteps']} timesteps, "
                         f"so at most {cfg['timesteps']} sampling steps")
    if a.temperature is not None:
        cfg = dict(cfg, temperature=a.temperature)
    if a.project is not None:
        cfg = dict(cfg, project=a.project)
    if a.project_smooth is not None:
        cfg = dict(cfg, project=True, project_smooth=a.project_smooth)
    if cfg.get('temperature', 1.0) < 1 and a.sampler == 'ddpm' and a.steps < 50:
        # measured (README "What made it work"): temperature 0.6 with 5-20 DDPM steps leaves more noise, not less
        print(f"warning: temperature {cfg['temperature']} with {a.steps} DDPM steps is off the measured range "
              f"(>= 50 steps); use more steps or --temperature 1", file=sys.stderr)
    return cfg


def sample_sr(a, device, dtype):
    """Super-resolve --input, writing each batch as it finishes -> (images written, grid rows, grid columns)."""
    inputs = list_inputs(a.input)
    if not a.ckpt:  # the shipped model that fits the first input's size
        first = data.load_image(inputs[0][1])
        a.ckpt = pick_sr_model(a.pretrained_dir, min(first.shape[-2:]))
    a.steps = a.steps or SR_STEPS
    model, cfg = load_model(a.ckpt, device)
    cfg = sr_config(a, cfg)
    task = parse_task(cfg['task'])
    print(f"SR model {a.ckpt} ({cfg['task']}), {a.sampler} {a.steps} steps")
    generator = make_generator(a.seed, device)  # on the sampling device, like the relay path
    rows, psnr_sr, psnr_bicubic = [], [], []
    for batch in tqdm(list(batches(inputs, a.batch_size)), desc=f'super-resolving {len(inputs)} images'):
        pairs = [sr_input(data.load_image(f), f, task['lr'], task['hr']) for _, f in batch]
        lr = torch.stack([p[0] for p in pairs])
        out, bicubic = super_resolve(model, cfg, lr, a.steps, a.sampler, generator, device, dtype, a.eta or 0.0)
        write_batch(a.out, [name for name, _ in batch], out)
        for i, (_, original) in enumerate(pairs):
            if original is not None:
                psnr_sr.append(metrics.psnr(out[i], original).item())
                psnr_bicubic.append(metrics.psnr(bicubic[i], original).item())
            if len(rows) < GRID_ROWS:
                lr_big = F.interpolate(lr[i:i + 1], size=task['hr'], mode='nearest')[0]
                rows.append([lr_big, bicubic[i], out[i], original])
    if psnr_sr:
        print(f"PSNR against the originals ({len(psnr_sr)} images, {task['hr']}x{task['hr']}): "
              f"SR {sum(psnr_sr) / len(psnr_sr):.2f} dB, bicubic {sum(psnr_bicubic) / len(psnr_bicubic):.2f} dB")
    ncol = 4 if any(row[3] is not None for row in rows) else 3  # the original's column if any input had one
    blank = torch.ones(3, task['hr'], task['hr'])  # white where an input had no original
    grid = [img if img is not None else blank for row in rows for img in row[:ncol]]
    return len(inputs), grid, ncol


def sample_relay(a, device, dtype):
    """Relay stage 2 (--ckpt-second) on --input or on stage-1 samples (--ckpt-first), writing each batch as it
    finishes -> (images written, grid rows, grid columns)."""
    m2, cfg2 = load_model(a.ckpt_second, device)
    t2 = parse_task(cfg2['task'])
    if t2['kind'] != 'relay2':
        raise UsageError(f"{a.ckpt_second} is a {cfg2['task']} checkpoint, not a relay stage 2 (relayL_H)")
    if a.input:
        inputs = list_inputs(a.input)
    else:
        m1, cfg1 = load_model(a.ckpt_first, device)
        if cfg1['task'] != f"relay{t2['lr']}":
            raise UsageError(f"{a.ckpt_first} is a {cfg1['task']} checkpoint; stage 2 {cfg2['task']} needs "
                             f"relay{t2['lr']}")
        D1 = relay.EDMPrecond(m1)
        inputs = [(f'{i:05d}', None) for i in range(a.n)]
    D2 = relay.EDMPrecond(m2)
    kwargs = relay_kwargs(a, cfg2)
    print(f"relay models: {a.ckpt_first or '(stage 1: --input)'} + {a.ckpt_second}, "
          f"{a.steps_first} + {a.steps_second} steps")
    generator = make_generator(a.seed, device)  # the relay samplers draw their noise on the images' device
    grid = []
    for batch in tqdm(list(batches(inputs, a.batch_size)), desc=f'relay {len(inputs)} images'):
        if a.input:
            lr = torch.stack([read_size(f, t2['lr']) for _, f in batch])
        else:  # stage 1 (EDM) at L pixels
            latents = torch.randn(len(batch), 3, t2['lr'], t2['lr'], generator=generator, device=device)
            with autocast(device, dtype):
                lr = relay.edm_sampler(D1, latents, steps=a.steps_first, generator=generator)
            lr = lr.float().cpu().clamp(-1, 1)
        x_up = nearest_up(lr, t2['block'])
        with autocast(device, dtype):
            out = relay.relay_sampler(D2, x_up.to(device), steps=a.steps_second, block=t2['block'],
                                      generator=generator, **kwargs)
        out = out.float().cpu()
        write_batch(a.out, [name for name, _ in batch], out)
        for i in range(min(len(out), GRID_ROWS - len(grid) // 2)):
            grid += [x_up[i], out[i]]  # stage 1 (or the input), nearest-upsampled | stage 2
    return len(inputs), grid, 2


def read_size(f, size):
    x = data.load_image(f)
    if x.shape[-2:] != (size, size):
        raise data.DataError(f'{f}: image is {x.shape[-1]}x{x.shape[-2]}, the model expects {size}x{size} inputs')
    return x


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


def main(argv=None):
    try:
        a = get_args(argv)
        device = pick_device(a.device)
        dtype, _ = pick_dtype(a.dtype, device)
        if a.relay:
            n, grid, ncol = sample_relay(a, device, dtype)
        else:
            n, grid, ncol = sample_sr(a, device, dtype)
        rows = len(grid) // ncol
        data.save_grid(torch.stack(grid), a.grid, nrow=ncol * max(1, min(4, rows // 4)))
        print(f'wrote {n} images to {a.out}')
        print(f'grid: {a.grid}')
    except (UsageError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
