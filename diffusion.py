"""
SR3 Gaussian diffusion (Saharia et al. 2021) with the DREAM rectified loss (Zhou et al. 2024).

Forward process (DDPM, Ho et al. 2020, Eq. 4):  x_t = gamma * x0 + sqrt(1 - gamma^2) * eps,  gamma = sqrt(alpha_bar).
SR3's twist (Sec. 2.4): the network is conditioned on the *continuous* noise level gamma, not on the
integer t. Training draws t ~ U{1..T} and then gamma ~ U(gamma_{t-1}, gamma_t), so the model learns
every noise level in [gamma_T, 1] and can be sampled with any number of steps (here: any subset of
the training grid, "respacing"), with ancestral DDPM or deterministic DDIM (Song et al. 2021).
Super-resolution conditioning: the bicubic-upsampled low-res image is concatenated to x_t.

SR3 is the default: the network predicts eps and x0 is the high-res image. Two documented options
(not SR3; see README "What made it work"):
  pred='x0' | 'v'   the network predicts x0, or v = gamma * eps - sqrt(1 - gamma^2) * x0 (Salimans & Ho 2022);
                    eps-prediction turns an error e of the network into an x0 error e * sqrt(1-gamma^2) / gamma,
                    150x at SR3's last noise level, which a small network cannot afford.
  residual=True     diffuse the residual x0 = HR - bicubic(LR) (SRDiff, Li et al. 2022), the bicubic image is
                    added back after sampling.
  noise_cond='log_sigma'  condition the network on ln(sigma) / 4, sigma = sqrt(1 - gamma^2) / gamma (EDM's c_noise of
                    the equivalent variance-exploding noise level) instead of gamma: gamma crowds every low noise
                    level into [0.99, 1], where SR3's sinusoidal embedding cannot tell them apart.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dream import rectify_eps

PREDICTIONS = ('eps', 'x0', 'v')
# The largest training gamma: float32's largest value below 1 (1 - 2^-24). A float64 draw within 2^-25 of 1 (about
# 2.5e-5 of SR3's draws) would round to 1.0 in float32, making s = sqrt(1 - gamma^2) = 0 and the x0 -> eps
# conversion of --pred x0 (and DREAM's rectification through it) 0 * inf = NaN.
GAMMA_MAX = 1 - 2 ** -24
NOISE_CONDS = ('gamma', 'log_sigma')


def beta_schedule(kind, steps, start=1e-6, end=1e-2, cosine_s=8e-3):
    """Betas of a T-step schedule (SR3's make_beta_schedule), float64 numpy array of length `steps`."""
    if kind == 'linear':  # DREAM / SR3 16->128 training: linear 1e-6 .. 1e-2, 2000 steps
        b = np.linspace(start, end, steps, dtype=np.float64)
    elif kind == 'quad':
        b = np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2
    elif kind in ('warmup10', 'warmup50'):
        b = np.full(steps, end, dtype=np.float64)
        fraction = 0.1 if kind == 'warmup10' else 0.5
        w = int(steps * fraction)
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


def _bcast(v):
    return v.reshape(-1, 1, 1, 1)


def downsample_matrix(n_hr, n_lr, device=None):
    """(n_lr, n_hr) matrix of 1-D antialiased bicubic downsampling (torch's, which follows PIL's), float64."""
    eye = torch.eye(n_hr, dtype=torch.float64, device=device).reshape(n_hr, 1, 1, n_hr)
    rows = F.interpolate(eye, size=(1, n_lr), mode='bicubic', antialias=True, align_corners=False)
    return rows.reshape(n_hr, n_lr).T


def _right_inverse(D, smooth):
    """P with D P = I: the pseudo-inverse (smooth 0) or the smoothness-weighted one (LowResProjection)."""
    if smooth == 0:
        return torch.linalg.pinv(D)
    n = D.shape[1]
    eye = torch.eye(n, dtype=D.dtype, device=D.device)
    G = torch.diff(eye, n=2, dim=0)
    M_inv_Dt = torch.linalg.solve(eye + smooth * G.T @ G, D.T)
    return M_inv_Dt @ torch.linalg.inv(D @ M_inv_Dt)


class LowResProjection:
    """Exact projection of an image onto the images whose bicubic downsample is the low-res input (a consistency
    step in the sampler, our option; the range-null-space idea of DDNM, Wang et al. 2023):
        x <- x + P_h (lr - D_h x D_w^T) P_w^T,   P = D^T (D D^T)^-1 (the pseudo-inverse of each 1-D operator).
    It replaces the low frequencies of x0_hat by the input's and keeps the model's high frequencies.

    smooth > 0 (our option, `--project-smooth`): the correction is the smoothest one instead of the smallest, per
    axis P = M^-1 D^T (D M^-1 D^T)^-1 with M = I + smooth G^T G, G the second difference: the result is just as
    consistent (D P = I), but the correction no longer carries the LR grid's 4x4 texture (the pseudo-inverse's rows
    are the bicubic kernel, whose slope peaks between LR samples; README "What made it work")."""

    def __init__(self, lr, hr_size, smooth=0.0):
        if not smooth >= 0:
            raise ValueError(f'smooth must be >= 0, got {smooth}')
        h, w = hr_size
        self.lr = lr.double()
        self.D_h = downsample_matrix(h, lr.shape[-2], lr.device)
        self.D_w = downsample_matrix(w, lr.shape[-1], lr.device)
        self.P_h = _right_inverse(self.D_h, smooth)
        self.P_w = _right_inverse(self.D_w, smooth)

    def __call__(self, x):
        xd = x.double()
        residual = self.lr - self.D_h @ xd @ self.D_w.T
        return (xd + self.P_h @ residual @ self.P_w.T).to(x.dtype)


class GaussianDiffusion:
    def __init__(self, model, betas, pred='eps', residual=False, noise_cond='gamma'):
        if pred not in PREDICTIONS:
            raise ValueError(f"unknown prediction target '{pred}' ({', '.join(PREDICTIONS)})")
        if noise_cond not in NOISE_CONDS:
            raise ValueError(f"unknown noise conditioning '{noise_cond}' ({', '.join(NOISE_CONDS)})")
        self.noise_cond = noise_cond
        self.model = model  # any nn.Module with forward(x, noise_level); may be DDP-wrapped for training
        self.pred = pred
        self.residual = residual
        betas = torch.as_tensor(np.asarray(betas), dtype=torch.float64)
        self.num_timesteps = len(betas)
        ab = torch.cumprod(1 - betas, 0)
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), ab])  # alpha_bar[0] = 1, [t] for t = 1..T
        self.gamma = self.alpha_bar.sqrt()  # SR3's sqrt_alphas_cumprod_prev

    def noise_level(self, gamma):
        """What the network is conditioned on: SR3's gamma, or ln(sigma) / 4 with sigma = sqrt(1 - gamma^2) / gamma."""
        if self.noise_cond == 'gamma':
            return gamma.reshape(-1)
        g = gamma.double().reshape(-1)
        sigma = (1 - g * g).clamp(min=1e-12).sqrt() / g  # gamma = 1 exactly (t = 1, u = 0) must not give ln 0
        return sigma.log().float() / 4

    def net_out(self, x_t, cond, gamma, model=None):
        """The raw network output: input = [cond, x_t] along channels (SR3's order), noise level gamma."""
        net = self.model if model is None else model
        inp = x_t if cond is None else torch.cat([cond, x_t], dim=1)
        return net(inp, self.noise_level(gamma).to(x_t.dtype)).float()

    def predict(self, x_t, cond, gamma, model=None):
        """(x0_hat, eps_hat) from the network's output, whatever it predicts (eps, x0 or v)."""
        out = self.net_out(x_t, cond, gamma, model)
        g = _bcast(gamma.float())
        s = (1 - g * g).sqrt()
        x_t = x_t.float()
        if self.pred == 'eps':
            return (x_t - s * out) / g, out
        if self.pred == 'x0':
            return out, (x_t - g * out) / s
        return g * x_t - s * out, s * x_t + g * out  # v = g eps - s x0

    def eps(self, x_t, cond, gamma, model=None):
        """The model's noise estimate (for eps-prediction: the network's output itself)."""
        return self.predict(x_t, cond, gamma, model)[1]

    def target(self, x0, eps, gamma):
        """What the network regresses onto, in its own parametrisation."""
        if self.pred == 'eps':
            return eps
        if self.pred == 'x0':
            return x0
        g = _bcast(gamma.float())
        return g * eps - (1 - g * g).sqrt() * x0

    def q_sample(self, x0, gamma, eps):
        g = _bcast(gamma).to(x0.dtype)
        return g * x0 + (1 - g * g).sqrt() * eps

    def sample_gamma(self, b, device, generator=None):
        """SR3 training noise levels: t ~ U{1..T}, gamma ~ U(gamma_t, gamma_{t-1}) (continuous), at most GAMMA_MAX
        (so that s = sqrt(1 - gamma^2) > 0 also in float32)."""
        where = generator.device if generator is not None else 'cpu'
        t = torch.randint(1, self.num_timesteps + 1, (b,), generator=generator, device=where).cpu()
        u = torch.rand(b, generator=generator, dtype=torch.float64, device=where).cpu()
        g = self.gamma[t - 1] + u * (self.gamma[t] - self.gamma[t - 1])
        g = g.clamp(max=GAMMA_MAX)
        return g.to(device)  # float64: 1 - gamma^2 near gamma = 1 needs it (log_sigma conditioning)

    def loss(self, x0, cond, dream_p=None, loss_type='l1', generator=None):
        """Training loss: standard SR3 (dream_p None) or DREAM-rectified (dream_p = p, paper Algorithm 1).

        The standard loss regresses the network on the true noise eps (or x0 / v built from it). The official DREAM
        code's order='inf' path instead runs the network twice with gradients (train mode, dropout on) and regresses
        one pass onto the other: it never sees the true noise. Noisy inputs and the DREAM correction are fp32 even
        under autocast; only the network runs in the autocast dtype.
        """
        # The forward process and DREAM's correction are elementwise fp32 arithmetic (autocast leaves elementwise
        # ops alone), so they stay fp32 under autocast; only the network's convolutions run in the autocast dtype.
        x0 = x0.float()
        cond = None if cond is None else cond.float()
        if self.residual:
            x0 = x0 - cond  # SRDiff: diffuse HR - bicubic
        b = x0.shape[0]
        gamma = self.sample_gamma(b, x0.device, generator)
        if generator is not None:
            eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        else:
            eps = torch.randn_like(x0)
        x_t = self.q_sample(x0, gamma, eps)
        if dream_p is not None:
            x_t, eps = self.rectify(x_t, eps, cond, gamma, dream_p)
        tgt = self.target(x0, eps, gamma)
        pred = self.net_out(x_t, cond, gamma)
        if loss_type == 'l1':
            return F.l1_loss(pred, tgt)
        if loss_type == 'l2':
            return F.mse_loss(pred, tgt)
        raise ValueError(f"unknown loss type '{loss_type}' (l1, l2)")

    def rectify(self, x_t, eps, cond, gamma, dream_p):
        """DREAM (dream.rectify_eps) with the network's own noise estimate, in eval mode (no dropout)."""
        net = unwrap(self.model)  # the no-grad pass bypasses DDP: no gradient sync needed
        was_training = net.training
        net.eval()
        try:
            a = _bcast(gamma.double() ** 2).float()
            return rectify_eps(lambda x: self.eps(x, cond, gamma, net), x_t, eps, a, dream_p)
        finally:
            net.train(was_training)

    def respaced(self, steps):
        """alpha_bar on `steps` evenly spaced training timesteps t_i = round(i T / steps), i = 1..steps (the last is
        always T: even a 1-step grid starts from pure noise), plus alpha_bar_0 = 1; ascending in t."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f'sampling steps must be in 1..{self.num_timesteps}, got {steps}')
        i = torch.arange(1, steps + 1, dtype=torch.float64)
        ts = (i * self.num_timesteps / steps).round().long()
        return torch.cat([self.alpha_bar[:1], self.alpha_bar[ts]])

    @torch.inference_mode()
    def sample(self, cond, steps, sampler='ddpm', shape=None, generator=None, clip=True, eta=0.0,
               progress=False, eps_fn=None, lr=None, temperature=1.0, project_smooth=0.0):
        """Generate x0 given `cond` (B, C, H, W) with `steps` network evaluations.

        sampler 'ddpm': ancestral sampling with the posterior q(x_{s} | x_t, x0_hat) of the respaced chain
        (DDPM Eq. 6-7); 'ddim': DDIM (Song et al. Eq. 12) with eta (0 = deterministic). x0_hat is clipped
        so that the image lies in [-1, 1] when `clip`. `eps_fn(x_t, gamma)` replaces the network (used by tests
        with closed forms). With `residual` the bicubic condition is added back to the result.
        lr: the low-res input (B, C, h, w) in [-1, 1]; when given, every x0_hat is projected onto the images whose
        bicubic downsample is lr (LowResProjection; project_smooth its `smooth`), before clipping. Not SR3: an option
        (README).
        temperature: the noise added at every step after the first is scaled by it (1 = the sampler as written;
        SRFlow-style sampling temperature, our option): < 1 trades sample diversity and detail for less of the
        speckle an undertrained model leaves (README "What made it work"); 0 adds no noise after x_T.
        """
        if not temperature >= 0:
            raise ValueError(f'temperature must be >= 0, got {temperature}')
        if sampler not in ('ddpm', 'ddim'):
            raise ValueError(f"unknown sampler '{sampler}' (ddpm, ddim)")
        if shape is None:
            shape = (cond.shape[0], 3, *cond.shape[-2:])
        if cond is not None:
            device = cond.device
        elif eps_fn is None:
            device = next(unwrap(self.model).parameters()).device
        else:
            device = torch.device('cpu')
        base = cond.float() if self.residual else torch.zeros((), device=device)

        def randn():  # drawn where the generator lives (a CPU generator on a GPU run: drawn on the CPU, moved)
            if generator is None:
                return torch.randn(shape, dtype=torch.float32, device=device)
            return torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device).to(device)

        if eps_fn is not None:
            def denoise(x, gamma):
                e = eps_fn(x, gamma).float()
                g = _bcast(gamma.float())
                return (x - (1 - g * g).sqrt() * e) / g, e
        else:
            net = unwrap(self.model)
            net.eval()
            # CPU: the network's inputs in channels_last, ~1.15x faster sampling even with NCHW weights (bench.py);
            # on CUDA the caller's layout is kept.
            on_cpu = device.type == 'cpu'
            c = cond.contiguous(memory_format=torch.channels_last) if on_cpu and cond is not None else cond

            def denoise(x, gamma):
                xin = x.contiguous(memory_format=torch.channels_last) if on_cpu else x
                return self.predict(xin, c, gamma, net)

        project = None if lr is None else LowResProjection(lr.to(device), shape[-2:], project_smooth)
        ab = self.respaced(steps).to(device)
        x = randn()
        for i in tqdm(range(steps, 0, -1), desc=f'{sampler} {steps} steps', disable=not progress, leave=False):
            a_t = ab[i]
            a_s = ab[i - 1]
            gamma = a_t.sqrt().expand(shape[0])
            x0, e = denoise(x, gamma)
            if project is not None:
                x0 = project(x0 + base) - base
                e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            if clip:
                x0 = torch.clamp(x0 + base, -1, 1) - base
                e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise consistent with the clipped x0
            if sampler == 'ddpm':
                beta = 1 - a_t / a_s
                mean = (a_s.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_s) * x) / (1 - a_t)
                var = beta * (1 - a_s) / (1 - a_t)
                x = mean + temperature * var.sqrt() * randn() if i > 1 else mean
            else:
                sig = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
                x = a_s.sqrt() * x0 + (1 - a_s - sig ** 2).sqrt() * e
                if i > 1 and eta > 0:
                    x = x + temperature * sig * randn()
            x = x.float()
        return (x + base).contiguous()
