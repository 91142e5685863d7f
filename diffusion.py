"""
SR3 Gaussian diffusion (Saharia et al. 2021) with the DREAM rectified loss (Zhou et al. 2024).

Forward process (DDPM, Ho et al. 2020, Eq. 4):  x_t = gamma * x0 + sqrt(1 - gamma^2) * eps,  gamma = sqrt(alpha_bar).
SR3's twist (Sec. 2.4): the network is conditioned on the *continuous* noise level gamma, not on the
integer t. Training draws t ~ U{1..T} and then gamma ~ U(gamma_{t-1}, gamma_t), so the model learns
every noise level in [gamma_T, 1] and can be sampled with any number of steps (here: any subset of
the training grid, "respacing"), with ancestral DDPM or deterministic DDIM (Song et al. 2021).
Super-resolution conditioning: the bicubic-upsampled low-res image is concatenated to x_t.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dream import rectify_eps


def beta_schedule(kind, steps, start=1e-6, end=1e-2, cosine_s=8e-3):
    """Betas of a T-step schedule (SR3's make_beta_schedule), float64 numpy array of length `steps`."""
    if kind == 'linear':  # DREAM / SR3 16->128 training: linear 1e-6 .. 1e-2, 2000 steps
        b = np.linspace(start, end, steps, dtype=np.float64)
    elif kind == 'quad':
        b = np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2
    elif kind in ('warmup10', 'warmup50'):
        b = np.full(steps, end, dtype=np.float64)
        w = int(steps * (0.1 if kind == 'warmup10' else 0.5))
        b[:w] = np.linspace(start, end, w, dtype=np.float64)
    elif kind == 'const':
        b = np.full(steps, end, dtype=np.float64)
    elif kind == 'jsd':  # 1/T, 1/(T-1), ..., 1
        b = 1.0 / np.linspace(steps, 1, steps, dtype=np.float64)
    elif kind == 'cosine':  # Nichol & Dhariwal 2021, Eq. 17
        s = np.arange(steps + 1, dtype=np.float64) / steps + cosine_s
        ab = np.cos(s / (1 + cosine_s) * math.pi / 2) ** 2
        b = np.clip(1 - ab[1:] / ab[:-1], 0, 0.999)
    else:
        raise ValueError(f"unknown beta schedule '{kind}' (linear, cosine, quad, warmup10, warmup50, const, jsd)")
    return b


def unwrap(model):
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


class GaussianDiffusion:
    def __init__(self, model, betas):
        self.model = model  # any nn.Module with forward(x, noise_level); may be DDP-wrapped for training
        betas = torch.as_tensor(np.asarray(betas), dtype=torch.float64)
        self.num_timesteps = len(betas)
        ab = torch.cumprod(1 - betas, 0)
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), ab])  # alpha_bar[0] = 1, [t] for t = 1..T
        self.gamma = self.alpha_bar.sqrt()  # SR3's sqrt_alphas_cumprod_prev

    def eps(self, x_t, cond, gamma, model=None):
        """The network's noise estimate: input = [cond, x_t] along channels (SR3's order)."""
        net = self.model if model is None else model
        inp = x_t if cond is None else torch.cat([cond, x_t], dim=1)
        return net(inp, gamma.to(x_t.dtype).reshape(-1)).float()

    def q_sample(self, x0, gamma, eps):
        g = gamma.reshape(-1, 1, 1, 1).to(x0.dtype)
        return g * x0 + (1 - g * g).sqrt() * eps

    def sample_gamma(self, b, device, generator=None):
        """SR3 training noise levels: t ~ U{1..T}, gamma ~ U(gamma_t, gamma_{t-1}) (continuous)."""
        t = torch.randint(1, self.num_timesteps + 1, (b,), generator=generator)
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        g = self.gamma[t - 1] + u * (self.gamma[t] - self.gamma[t - 1])
        return g.float().to(device)

    def loss(self, x0, cond, dream_p=None, loss_type='l1', generator=None):
        """Training loss: standard SR3 (dream_p None) or DREAM-rectified (dream_p = p, paper Algorithm 1).

        The standard loss is a real regression of eps_theta(x_t) onto the true noise eps (the official DREAM
        code's order='inf' path instead compares the model with a detached copy of itself: loss 0, no learning).
        """
        b = x0.shape[0]
        gamma = self.sample_gamma(b, x0.device, generator)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype) if generator is not None \
            else torch.randn_like(x0)
        x_t = self.q_sample(x0, gamma, eps)
        if dream_p is not None:
            net = unwrap(self.model)  # the no-grad pass bypasses DDP (no gradient sync needed) and dropout
            was_training = net.training
            net.eval()
            try:
                a = (gamma.double() ** 2).reshape(-1, 1, 1, 1).float()
                x_t, eps = rectify_eps(lambda x: self.eps(x, cond, gamma, net), x_t, eps, a, dream_p)
            finally:
                net.train(was_training)
        pred = self.eps(x_t, cond, gamma)
        if loss_type == 'l1':
            return F.l1_loss(pred, eps.float())
        if loss_type == 'l2':
            return F.mse_loss(pred, eps.float())
        raise ValueError(f"unknown loss type '{loss_type}' (l1, l2)")

    def respaced(self, steps):
        """alpha_bar on `steps` evenly spaced training timesteps (plus alpha_bar_0 = 1), ascending in t."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f'sampling steps must be in 1..{self.num_timesteps}, got {steps}')
        ts = torch.linspace(1, self.num_timesteps, steps, dtype=torch.float64).round().long()
        return torch.cat([self.alpha_bar[:1], self.alpha_bar[ts]])

    @torch.inference_mode()
    def sample(self, cond, steps, sampler='ddpm', shape=None, generator=None, clip=True, eta=0.0,
               progress=False, eps_fn=None):
        """Generate x0 given `cond` (B, C, H, W) with `steps` network evaluations.

        sampler 'ddpm': ancestral sampling with the posterior q(x_{s} | x_t, x0_hat) of the respaced chain
        (DDPM Eq. 6-7); 'ddim': DDIM (Song et al. Eq. 12) with eta (0 = deterministic). x0_hat is clipped
        to [-1, 1] when `clip`. `eps_fn(x_t, gamma)` replaces the network (used by tests with closed forms).
        """
        if sampler not in ('ddpm', 'ddim'):
            raise ValueError(f"unknown sampler '{sampler}' (ddpm, ddim)")
        shape = shape or (cond.shape[0], 3, *cond.shape[-2:])
        device = cond.device if cond is not None else next(unwrap(self.model).parameters()).device if eps_fn is None else 'cpu'
        dtype = torch.float32

        def randn():
            return torch.randn(shape, generator=generator, dtype=dtype).to(device)

        if eps_fn is None:
            net = unwrap(self.model)
            net.eval()
            # CPU: the network's inputs in channels_last, ~1.15x faster sampling even with NCHW weights (bench.py; training
            # and the DREAM estimate stay NCHW, faster there for fp32). On CUDA the caller's layout is kept.
            cl = (lambda t: t.contiguous(memory_format=torch.channels_last)) if torch.device(device).type == 'cpu' else (lambda t: t)
            c = None if cond is None else cl(cond)
            eps_fn = lambda x, g: self.eps(cl(x), c, g, net)
        ab = self.respaced(steps).to(device)
        x = randn()
        for i in tqdm(range(steps, 0, -1), desc=f'{sampler} {steps} steps', disable=not progress, leave=False):
            a_t, a_s = ab[i], ab[i - 1]
            gamma = a_t.sqrt().float().expand(shape[0])
            e = eps_fn(x, gamma).to(dtype)
            x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            if clip:
                x0 = x0.clamp(-1, 1)
                e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise consistent with the clipped x0
            if sampler == 'ddpm':
                beta = 1 - a_t / a_s
                mean = (a_s.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_s) * x) / (1 - a_t)
                var = beta * (1 - a_s) / (1 - a_t)
                x = (mean + var.sqrt() * randn() if i > 1 else mean).to(dtype)
            else:
                sig = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
                x = a_s.sqrt() * x0 + (1 - a_s - sig ** 2).sqrt() * e
                x = (x + sig * randn() if i > 1 and eta > 0 else x).to(dtype)
        return x.contiguous()
