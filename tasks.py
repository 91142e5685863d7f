"""What a task is: its name parsed, its network, its training loss, and its sampler on held-out images.

    sr16_128     SR3 / DREAM super-resolution 16 -> 128: x_t and the bicubic-upsampled LR in (6 channels), eps out
    srL_H        any SR pair (sr8_32, sr16_64, ...)
    relay64      Relay Diffusion stage 1: an EDM model at 64 pixels (unconditional)
    relay64_256  Relay Diffusion stage 2: blur diffusion from the nearest-upsampled 64 image to 256 (block = H / L)

Every function takes the run's settings as a plain dict (a checkpoint's 'args', or vars() of train.py's flags), so
one place, `make_diffusion` / `compute_loss`, turns flags into the diffusion and the loss.
"""
import re
import statistics
import time

import torch
import torch.nn.functional as F

import metrics
import relay
from diffusion import GaussianDiffusion, beta_schedule, unwrap
from runtime import UsageError, autocast, generator_on
from unet import PRESETS, build_unet

# The diffusion / loss flags of train.py and their defaults (SR3 / DREAM; RDM stage 2): one place for train.py's
# argparse, bench.py and make_diffusion / compute_loss.
# pred / residual / noise_cond / project: SR options beyond SR3 (diffusion.py; README "What made it work"); the
# defaults are SR3's. A checkpoint written before they existed reads them with these defaults.
LOSS_DEFAULTS = dict(schedule='linear', timesteps=2000, beta_start=1e-6, beta_end=1e-2, loss='l1',
                     dream=False, dream_p=1.0, blur_sigma_max=3.0, prob_length=0.93, block_noise=0.15,
                     pred='eps', residual=False, noise_cond='gamma', project=False, project_smooth=0.0)
# RDM's stage-2 sampler keeps sqrt(1 - s_noise^2) of its noise estimate per step and draws the rest afresh
# (train.py --s-noise; the README's CPU runs use 1).
RDM_S_NOISE = 0.2


def sr_sampling(cfg, lr):
    """The SR sampler options a run was trained with (its --project, --project-smooth, --temperature), for
    GaussianDiffusion.sample: the low-resolution consistency step on `lr` only if the run asked for it."""
    return dict(lr=lr if cfg.get('project') else None, temperature=cfg.get('temperature', 1.0),
                project_smooth=cfg.get('project_smooth', LOSS_DEFAULTS['project_smooth']))


def parse_task(task):
    """sr16_128 -> SR 16->128; relay64 -> RDM stage 1 at 64; relay64_256 -> RDM stage 2 from 64 to 256."""
    m = re.fullmatch(r'(sr|relay)(\d+)(?:_(\d+))?', task or '')
    if not m or (m[1] == 'sr' and not m[3]):
        raise UsageError(f"unknown task '{task}' (use srL_H like sr16_128, relayL like relay64, relayL_H like relay64_256)")
    kind, lo = m[1], int(m[2])
    hi = int(m[3]) if m[3] else None
    if lo <= 0 or (hi is not None and hi <= lo):
        raise UsageError(f"task '{task}': resolutions must satisfy 0 < L < H")
    if kind == 'sr':
        return dict(kind='sr', lr=lo, hr=hi, res=hi)
    if hi is None:
        return dict(kind='relay1', lr=lo, hr=lo, res=lo)
    if hi % lo:
        raise UsageError(f"task '{task}': H={hi} must be a multiple of L={lo} (the DCT block is H/L)")
    return dict(kind='relay2', lr=lo, hr=hi, res=hi, block=hi // lo)


def task_info(task):
    """parse_task for a name; an already parsed task passes through."""
    return parse_task(task) if isinstance(task, str) else task


def check_resolution(task, model):
    """The UNet halves the image len(channel_mults) - 1 times: the resolution must divide by that."""
    info = task_info(task)
    min_size = 2 ** (len(PRESETS[model]['channel_mults']) - 1)
    if info['res'] % min_size:
        name = task if isinstance(task, str) else f"resolution {info['res']}"
        raise UsageError(f"task '{name}': resolution {info['res']} must be divisible by {min_size} for --model {model}")


def relay_noise(cfg):
    """A stage-2 run's sampling noise (s_noise, s_block): its --s-noise and --block-noise (block noise at sampling
    as much as in training, RDM 0.15 both); runs from before those flags get RDM's values."""
    return cfg.get('s_noise', RDM_S_NOISE), cfg.get('block_noise', LOSS_DEFAULTS['block_noise'])


def relay_projection(cfg):
    """A stage-2 run's tile-mean consistency step at sampling (relay.relay_sampler's project / project_smooth):
    its --project and --project-smooth; off for runs from before (or without) the flag."""
    return dict(project=bool(cfg.get('project', False)),
                project_smooth=cfg.get('project_smooth', LOSS_DEFAULTS['project_smooth']))


def loss_config(task, **flags):
    """The settings compute_loss reads, for `task`: LOSS_DEFAULTS with `flags` (e.g. dream=True) over them."""
    return dict(LOSS_DEFAULTS, task=task, **flags)


def build_model(task, model='small', grad_checkpoint=False, norm_groups=None, upsample='nearest', init='default', **_):
    """The task's UNet. SR: x_t + bicubic-upsampled LR in (6 channels); relay stages: x_t alone.
    norm_groups None: the preset's GroupNorm groups; upsample: the decoder's ('nearest', SR3's, or 'bilinear');
    init: the initial weights (unet.init_weights)."""
    info = task_info(task)
    in_channels = 6 if info['kind'] == 'sr' else 3
    overrides = {}
    if norm_groups is not None:
        overrides['groups'] = norm_groups
    return build_unet(model, in_channels, 3, info['res'], grad_checkpoint=grad_checkpoint, upsample=upsample,
                      init=init, **overrides)


def preset_norm_groups(model):
    return PRESETS[model].get('groups', 32)


def model_from_args(args):
    """The network a checkpoint's flags describe (checkpoint.load_checkpoint has checked they name all of it)."""
    return build_model(args['task'], args['model'], norm_groups=args['norm_groups'], upsample=args['upsample'])


# ----------------------------------------------------------------------------- diffusion and loss (from the flags)
def make_diffusion(model, cfg):
    """SR3's Gaussian diffusion of a run: --schedule, --timesteps, --beta-start, --beta-end."""
    betas = beta_schedule(cfg['schedule'], cfg['timesteps'], cfg['beta_start'], cfg['beta_end'])
    return GaussianDiffusion(model, betas, pred=cfg.get('pred', 'eps'), residual=cfg.get('residual', False),
                             noise_cond=cfg.get('noise_cond', 'gamma'))


def compute_loss(net, batch, cfg):
    """One training loss of the task; `net` may be DDP-wrapped (the DREAM no-grad pass unwraps it).
    SR: SR3's loss on (hr, sr) with optional DREAM; relay1: EDM's loss; relay2: RDM's blur loss."""
    cfg = cfg if isinstance(cfg, dict) else vars(cfg)
    info = task_info(cfg['task'])
    dream_p = cfg['dream_p'] if cfg['dream'] else None
    if info['kind'] == 'sr':
        return make_diffusion(net, cfg).loss(batch['hr'], batch['sr'], dream_p=dream_p, loss_type=cfg['loss'])
    D = relay.EDMPrecond(net)
    D_nograd = relay.EDMPrecond(unwrap(net))
    if info['kind'] == 'relay1':
        return relay.edm_loss(D, batch['image'], dream_p=dream_p, D_nograd=D_nograd)
    return relay.blur_loss(D, batch['image'], block=info['block'], blur_sigma_max=cfg['blur_sigma_max'],
                           prob_length=cfg['prob_length'], block_scale=relay_noise(cfg)[1], dream_p=dream_p,
                           D_nograd=D_nograd)


def random_batch(info, batch_size, device, fmt=torch.contiguous_format):
    """A batch of random images in [-1, 1] with every key a task's loss reads (hr, sr, lr; image)."""
    hr = torch.rand(batch_size, 3, info['res'], info['res'], device=device) * 2 - 1
    lr = torch.rand(batch_size, 3, info['lr'], info['lr'], device=device) * 2 - 1
    batch = dict(hr=hr, sr=hr.flip(-1), lr=lr, image=hr)
    return {k: v.contiguous(memory_format=fmt) for k, v in batch.items()}


def time_iterations(cfg, device, dtype, fmt=torch.contiguous_format, steps=2):
    """Median seconds of `steps` training iterations (after one untimed warm-up) of a fresh network of the run's flags
    `cfg` on random images: --grad-accum losses and backward passes, an Adam step. The RNG states are restored, so
    a run that calls it draws what it would have drawn."""
    times = []
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg['task'], cfg['model'], cfg.get('grad_checkpoint', False), cfg.get('norm_groups'),
                            cfg.get('upsample', 'nearest'), cfg.get('init', 'default'))
        model = model.to(device, memory_format=fmt).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.get('lr', 1e-4))
        batch = random_batch(task_info(cfg['task']), cfg['batch_size'], device, fmt)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            for _ in range(cfg.get('grad_accum', 1)):
                with autocast(device, dtype):
                    loss = compute_loss(model, batch, cfg).float()
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


# ----------------------------------------------------------------------------- sampling held-out images
def heldout(ds, n):
    """The first n items of a data set, stacked: dict of (n, 3, H, W) tensors."""
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}


def nearest_up(x, block):
    return F.interpolate(x, scale_factor=block, mode='nearest')


def relay_inputs(hr, block):
    """Relay stage 2 on held-out HR images: (its input, the tile means nearest-upsampled; the bicubic baseline,
    bicubic upsampling of the same tile means). The tile means are the HR image box-downsampled by `block`."""
    lr_box = F.avg_pool2d(hr, block)
    bicubic = F.interpolate(lr_box, size=hr.shape[-2:], mode='bicubic', align_corners=False).clamp(-1, 1)
    return nearest_up(lr_box, block), bicubic


@torch.inference_mode()
def sample_and_score(model, cfg, batch, steps, sampler='ddpm', generator=None, device='cpu', dtype=torch.float32):
    """Run a checkpoint's sampler on held-out `batch` -> (metrics of the means, grid images, grid columns).

    SR (srL_H): SR3 sampler conditioned on the bicubic-upsampled LR, metrics vs HR (+ bicubic baseline);
    grid LR | bicubic | SR | HR. Relay stage 2 (relayL_H): the relay sampler from the nearest-upsampled
    box-downsampled HR, metrics vs HR; grid LR | SR | HR. Relay stage 1 (relayL): unconditional samples.
    `generator` is a CPU generator (diffusion.py draws on the CPU); the relay samplers draw on the images'
    device, so they get one there, seeded from it.
    """
    info, device = task_info(cfg['task']), torch.device(device)
    relay_generator = generator_on(device, generator)
    if info['kind'] == 'sr':
        hr, lr, sr = (batch[k].to(device) for k in ('hr', 'lr', 'sr'))
        with autocast(device, dtype):
            out = make_diffusion(model, cfg).sample(sr, steps, sampler=sampler, generator=generator,
                                                    **sr_sampling(cfg, lr))
            out = out.float()
        res = metrics.mean_metrics(metrics.compute_metrics(out.cpu(), hr.cpu(), lr.cpu()))
        bicubic = metrics.mean_metrics(metrics.compute_metrics(sr.cpu(), hr.cpu(), lr.cpu()))
        res.update({f'bicubic_{k}': v for k, v in bicubic.items() if k != 'n'})
        cols = [F.interpolate(lr, size=hr.shape[-2:], mode='nearest'), sr, out, hr]
    elif info['kind'] == 'relay1':
        n = len(next(iter(batch.values())))
        x = torch.randn(n, 3, info['res'], info['res'], generator=generator).to(device)
        with autocast(device, dtype):
            out = relay.edm_sampler(relay.EDMPrecond(model), x, steps=steps, generator=relay_generator).float()
        return {}, out.cpu(), None
    else:
        hr = batch['image'].to(device)
        x_up, bicubic = relay_inputs(hr, info['block'])
        s_noise, s_block = relay_noise(cfg)
        with autocast(device, dtype):
            out = relay.relay_sampler(relay.EDMPrecond(model), x_up, steps=steps, block=info['block'],
                                      s_block=s_block, s_noise=s_noise,
                                      blur_sigma_max=cfg['blur_sigma_max'], truncation_t=cfg['prob_length'],
                                      truncation_sigma=relay.default_truncation_sigma(cfg['prob_length']),
                                      generator=relay_generator, **relay_projection(cfg)).float()
        res = metrics.mean_metrics(metrics.compute_metrics(out.cpu(), hr.cpu()))
        # the baselines on the same tile means (DESIGN.md "Results files"): the relay's own input and bicubic
        for name, base in (('input', x_up), ('bicubic', bicubic)):
            b = metrics.mean_metrics(metrics.compute_metrics(base.cpu(), hr.cpu()))
            res.update({f'{name}_{k}': v for k, v in b.items() if k != 'n'})
        cols = [x_up, out, hr]
    return res, torch.stack(cols, 1).flatten(0, 1).cpu(), len(cols)
