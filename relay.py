"""
Relay Diffusion (RDM, Teng et al., ICLR 2024): a two-stage cascade where stage 2 *continues* stage 1.

Stage 1 is a plain EDM model (Karras et al. 2022) at low resolution:
    x = y + sigma * n,  ln sigma ~ N(P_mean, P_std^2),  D(x, sigma) ~ E[y | x]    (EDM Sec. 5, Table 1)
and is sampled with EDM's Heun sampler (Algorithm 2).

Stage 2 is a *blurring* diffusion at high resolution. In the blockwise DCT basis of block_noise.py
(tile size = upsampling factor) the noisy image is (RDM: patch-wise blurring diffusion + block noise)
    u_t = a(t) * u_0 + sigma * DCT(n + block_scale * n_block)
with per-frequency blur factors a(t) (1 for the tile means, ~0 for the rest at the end of the
process) and block noise n_block. The end point of the process is the nearest-upsampled low-res
image plus noise, so sampling starts from stage 1's output at a moderate sigma (truncation_sigma)
instead of from pure noise, and runs a DDIM-like stochastic blur sampler with a Heun correction.
The network is the same EDM-preconditioned denoiser; it predicts the *sharp* image y.

DREAM (see dream.py) plugs into both losses through `dream.rectify_x0`.
Tensors are (B, C, H, W). Samplers take any callable D(x, sigma), sigma of shape (B,).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import dream
from block_noise import blur_factors, blur_sigma, block_noise, dct_2d, dct_blur, expand_factors, idct_2d, \
    sigma_to_t, t_to_sigma


# ----------------------------------------------------------------------------------------------
# EDM preconditioning (EDM Table 1, "Ours" column)

class EDMPrecond(nn.Module):
    """D(x, sigma, cond) = c_skip x + c_out F(c_in x, c_noise), with
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4. `model` is a UNet, forward(x, noise_level); `cond` (B, C', H, W), if given,
    is concatenated to the network input channels. The preconditioning runs in float32 (float64 for a
    float64 x) even under autocast; the network sees its parameters' dtype (autocast may lower it)."""

    def __init__(self, model, sigma_data=0.5):
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data

    def forward(self, x, sigma, cond=None):
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sigma ** 2 + sd ** 2).sqrt()
        c_noise = sigma.log().flatten() / 4
        inp = c_in * x
        if cond is not None:
            inp = torch.cat([inp, cond.to(dtype)], dim=1)
        p = next(self.model.parameters(), None)
        net_dtype = p.dtype if p is not None else dtype
        F_x = self.model(inp.to(net_dtype), c_noise.to(net_dtype))
        return c_skip * x + c_out * F_x.to(dtype)


# ----------------------------------------------------------------------------------------------
# Losses

def _randn(shape, like, generator):
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def _no_autocast(x):
    """Forward processes and DREAM corrections are built in fp32 even under autocast."""
    return torch.autocast(x.device.type, enabled=False)


def _at_least_fp32(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _estimate(D, like):
    """DREAM's gradient-free estimate (z, sigma) -> D(z, sigma), taken with the network in eval mode (no dropout),
    as in the SR path (diffusion.py). The caller's autocast (read now, while it is on) applies to the network,
    as for the training pass."""
    device_type = like.device.type
    autocast_on = torch.is_autocast_enabled(device_type)
    autocast_dtype = torch.get_autocast_dtype(device_type)

    def estimate(z, sigma):
        was_training = D.training if isinstance(D, nn.Module) else False
        if was_training:
            D.eval()
        try:
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_on):
                return _at_least_fp32(D(z, sigma))
        finally:
            if was_training:
                D.train(True)
    return estimate


def edm_loss(D, y, P_mean=-1.2, P_std=1.2, sigma_data=0.5, dream_p=None, generator=None, D_nograd=None):
    """EDM training loss (EDM Sec. 5: Eq. 2 weighted by Table 1's lambda): ln sigma ~ N(P_mean, P_std^2),
    x = y + sigma n, loss = mean of lambda(sigma) (D(x, sigma) - y)^2, lambda = (sigma^2 + sd^2) / (sigma sd)^2.

    dream_p: DREAM rectification (dream.rectify_x0) with lam = dream_lambda(alpha_bar, p), where
    alpha_bar = 1 / (1 + sigma^2) is the SR3 (variance preserving) equivalent of this variance
    exploding sigma: x / sqrt(1 + sigma^2) = sqrt(alpha_bar) y + sqrt(1 - alpha_bar) n, so DREAM's SR3
    update of x_t is exactly x += lam * (D(x) - y) in these units. D_nograd (default D) is used for the
    gradient-free pass; putting the network in eval mode there (no dropout) is the caller's job, e.g.
    an EMA copy or a wrapper that toggles model.eval(). Returns a scalar (mean over all elements).
    """
    B = y.shape[0]
    estimate = _estimate(D if D_nograd is None else D_nograd, y)  # before autocast is switched off
    with _no_autocast(y):  # the noisy input (and DREAM's correction) in fp32; only the network is autocast
        y = _at_least_fp32(y)
        sigma = (_randn((B,), y, generator) * P_std + P_mean).exp()
        s = sigma.view(-1, 1, 1, 1)
        weight = (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2
        x = y + s * _randn(y.shape, y, generator)
        if dream_p is not None:
            lam = dream.dream_lambda(1 / (1 + s ** 2), dream_p)
            x = dream.rectify_x0(lambda z: estimate(z, sigma), x, y, lam)
    return (weight * (D(x, sigma) - y) ** 2).mean()


def blur_loss(D, y, block=4, blur_sigma_max=3.0, prob_length=0.93, block_scale=0.15, truncate_sigma=7.5e-3,
              P_mean=-1.2, P_std=1.2, sigma_data=0.5, min_scale=1e-3, dream_p=None, generator=None,
              D_nograd=None):
    """RDM's BlurLoss (stage 2). Per sample:
      u ~ U(0, 1) clamped below at u_min, the blur time of truncate_sigma (tiny sigmas destabilise training);
      blur time t = u, blur std s = blur_sigma_max sin(pi u / 2)^2;
      sigma = t_to_sigma(u): EDM's log-normal restricted to its lower `prob_length` quantile, so the
        noise and the blur grow together (sigma_max = t_to_sigma(1) = 1.77 with the defaults);
      x = dct_blur(y, s) + sigma (n + block_scale n_block)   (no renormalisation, as in the official);
      loss = mean of min(lambda(sigma), 1e5) (D(x, sigma) - y)^2: the target is the *sharp* image.
    dream_p: as in edm_loss, with the correction blurred like the clean part of x:
      x += lam * dct_blur(D(x) - y, s).
    """
    B = y.shape[0]
    # Official: clamp(u, min=Phi(z(truncate_sigma)) * prob_length): the "*" should be "/" (that puts
    # the clamp at sigma = 0.0071 instead of the intended 0.0075); we clamp at truncate_sigma exactly.
    u_min = float(sigma_to_t(truncate_sigma, P_mean, P_std, prob_length))
    estimate = _estimate(D if D_nograd is None else D_nograd, y)  # before autocast is switched off
    with _no_autocast(y):  # in bf16 the DCT matmuls would round by ~0.01, more than the smallest sigma 0.0075
        y = _at_least_fp32(y)
        u = torch.rand((B,), generator=generator, dtype=torch.float64, device=y.device).clamp(min=u_min)
        sigma = t_to_sigma(u, P_mean, P_std, prob_length).to(y.dtype)
        s_blur = blur_sigma(u, blur_sigma_max).to(y.dtype)
        s = sigma.view(-1, 1, 1, 1)
        weight = ((s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2).clamp(max=1e5)

        def blur(z):
            with _no_autocast(z):
                return dct_blur(_at_least_fp32(z), block, s_blur, min_scale)

        n = _randn(y.shape, y, generator)
        if block_scale > 0:
            n = n + block_scale * block_noise(y, block, generator)
        x = blur(y) + s * n
        if dream_p is not None:
            lam = dream.dream_lambda(1 / (1 + s ** 2), dream_p)
            x = dream.rectify_x0(lambda z: estimate(z, sigma), x, y, lam, blur=blur)
    return (weight * (D(x, sigma) - y) ** 2).mean()


# ----------------------------------------------------------------------------------------------
# Samplers

def edm_sigmas(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device=None):
    """EDM Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..N-1 (float64, decreasing; the final 0 is not included)."""
    i = torch.arange(steps, dtype=torch.float64, device=device)
    frac = i / max(steps - 1, 1)
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _progress(it, progress):
    if not progress:
        return it
    from tqdm import tqdm
    return tqdm(it)


def _call(D, x, s):
    """D(x, s) for the samplers -> float64 NCHW. On a CPU the denoiser gets x in channels_last, as diffusion.py's
    sampler does: the convolutions and the attention's fused kernel are faster in it (bench.py --attention: a tiny
    stage-2 network at 256x256, bf16, 1.3x its NCHW speed)."""
    sigma = torch.full((x.shape[0],), float(s), dtype=x.dtype, device=x.device)
    if x.device.type == 'cpu' and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return D(x, sigma).to(dtype=torch.float64, memory_format=torch.contiguous_format)


@torch.inference_mode()
def edm_sampler(D, latents, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, S_churn=0.0, S_min=0.0,
                S_max=float('inf'), S_noise=1.0, generator=None, progress=False, callback=None):
    """EDM Algorithm 2: Heun's 2nd-order method on the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma, with optional churn (noise temporarily raised from sigma_i
    to sigma_hat = (1 + gamma) sigma_i, gamma = min(S_churn / steps, sqrt(2) - 1) for S_min <= sigma_i <= S_max).
    latents: unit Gaussian (B, C, H, W), scaled by sigma_max here. Computes in float64, returns latents'
    dtype. callback(i, x, denoised) after each step."""
    sig = edm_sigmas(steps, sigma_min, sigma_max, rho, latents.device)
    sig = torch.cat([sig, sig.new_zeros(1)])  # sigma_N = 0
    x = latents.to(torch.float64) * sig[0]
    for i in _progress(range(steps), progress):
        s_cur, s_next = sig[i], sig[i + 1]
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_min <= s_cur <= S_max else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            x = x + (s_hat ** 2 - s_cur ** 2).sqrt() * S_noise * _randn(x.shape, x, generator)
        denoised = _call(D, x, s_hat)
        d_cur = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d_cur  # Euler step
        if i < steps - 1:  # 2nd-order correction (not at the final step to sigma = 0)
            denoised = _call(D, x_next, s_next)
            d_prime = (x_next - denoised) / s_next
            x_next = x + (s_next - s_hat) * (d_cur + d_prime) / 2
        x = x_next
        if callback is not None:
            callback(i, x, denoised)
    return x.to(latents.dtype)


def default_truncation_sigma(prob_length, P_mean=-1.2, P_std=1.2, cap=0.9):
    """Where stage-2 sampling starts by default: RDM's 0.9, or lower when the model's blur process ends lower:
    with --prob-length p the training process is fully blurred at sigma_end = t_to_sigma(1, p) (1.77 for the
    default 0.93, 1.31 for CelebA-HQ's 0.89), and a start above sigma_end would ask the network about blur times
    > 1, which it never saw. Returns min(cap, 0.999 sigma_end)."""
    return min(cap, 0.999 * float(t_to_sigma(1.0, P_mean, P_std, prob_length)))


# ----------------------------------------------------------------------------------------------
# Tile-mean consistency (our option, the relay's analogue of diffusion.LowResProjection / SR's --project)

def box_matrix(size, block, dtype=torch.float64, device=None):
    """The 1-D box downsample A (size // block, size): row i averages pixels i*block .. i*block + block - 1."""
    eye = torch.eye(size // block, dtype=dtype, device=device)
    return eye.repeat_interleave(block, dim=1) / block


def smoothest_right_inverse(A, smooth):
    """P with A P = I whose columns are the smoothest: P = M^-1 A^T (A M^-1 A^T)^-1, M = I + smooth G^T G, G the
    second difference. smooth = 0: the pseudo-inverse A^T (A A^T)^-1 (for the box A: block * A^T, nearest up)."""
    n = A.shape[1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    G = torch.diff(eye, n=2, dim=0)
    M_inv_At = torch.linalg.solve(eye + smooth * G.T @ G, A.T)
    return M_inv_At @ torch.linalg.inv(A @ M_inv_At)


class TileMeanProjection:
    """Exact projection onto the images whose block x block tile means are `lr` (B, C, h, w). The box downsample
    A x = A_h x A_w^T is linear and A up = I (up: nearest upsampling), so the L2-closest such image is
        P(x) = x + up(lr - A x)     (smooth = 0: each tile shifted by its mean error; A P(x) = lr, P(P(x)) = P(x)).
    smooth > 0: the correction is the smoothest consistent one instead of the smallest, per axis
        P(x) = x + P_h (lr - A x) P_w^T,  P = smoothest_right_inverse(A, smooth)
    (still A P(x) = lr, but no 4x4 steps in the correction). Computes in float64, returns x's dtype."""

    def __init__(self, lr, block, smooth=0.0):
        if not smooth >= 0:
            raise ValueError(f'smooth must be >= 0, got {smooth}')
        h, w = lr.shape[-2] * block, lr.shape[-1] * block
        self.lr = lr.double()
        self.A_h = box_matrix(h, block, device=lr.device)
        self.A_w = box_matrix(w, block, device=lr.device)
        self.P_h = smoothest_right_inverse(self.A_h, smooth)
        self.P_w = smoothest_right_inverse(self.A_w, smooth)

    def __call__(self, x):
        xd = x.double()
        residual = self.lr - self.A_h @ xd @ self.A_w.T
        return (xd + self.P_h @ residual @ self.P_w.T).to(x.dtype)


@torch.inference_mode()
def relay_sampler(D, x_up, steps, truncation_sigma=0.9, truncation_t=0.93, block=4, s_block=0.15, s_noise=0.2,
                  blur_sigma_max=3.0, sigma_min=0.008, sigma_max=80.0, rho=7.0, generator=None, callback=None,
                  progress=False, heun_noise='reuse', project=False, project_smooth=0.0):
    """RDM's blur sampler (official `blur_sampler`), stage 2.

    x_up: the nearest-upsampled low-res image (B, C, H, W). The noise grid is EDM's (steps, sigma_min,
    sigma_max, rho) with every sigma >= truncation_sigma dropped; we start at the first remaining sigma
    from x = x_up + sigma_0 (n + s_block n_block). Blur factors a(sigma) use blur time
    sigma_to_t(sigma, prob_length=truncation_t), blur_sigma_max and min_scale 1e-3.

    One step sigma -> sigma' in the per-tile DCT basis (u = DCT(x), u0 = DCT(D(x, sigma))):
        u' = a(sigma') u0 + g (u - a(sigma) u0) + s_noise sigma' DCT(n + s_block n_block),
        g  = sqrt(1 - s_noise^2) sigma' / sigma,
    i.e. re-blur the clean estimate to the next level, keep a fraction of the current noise estimate
    and refresh the rest (a DDIM-like step for the blurring process). Written with the slope
    d = (u - u0) / sigma as u' = A u + B d + noise, A = a' + g - g a, B = sigma (g a - a'), it becomes
    Euler's step of EDM when a = a' = 1 and s_noise = 0; the Heun correction averages d with the slope
    at the predicted point. The last grid sigma returns D(x, sigma_last) (no step to 0). Where the blur
    changes, this update is only first-order accurate: with an exact Gaussian denoiser the per-frequency
    output variance is 0.92..0.99 of the truth after 40 steps below truncation, 0.965..0.99 after 160
    (tests/test_relay.py); the error halves when the steps double.
    heun_noise: which noise the corrector adds. 'reuse' (default, ../shared/DESIGN.md's contract): the
    predictor's z again, the stochastic-Heun rule of one noise path for predictor and corrector. 'fresh' (the
    official code): a new draw. The exact variance bookkeeping of tests/test_relay.py does not back our default:
    for Gaussian data with the exact denoiser, 'fresh' lands closer to the data's variance at every step count
    and s_noise tried (40 steps, s_noise 0.2: mean ratio 0.951 vs 0.933; s_noise 0.5: 0.919 vs 0.857), since
    reusing z correlates the corrector's noise with the slope it corrects (README "Relay Diffusion").
    sigma_min defaults to the official stage-2 value 0.008: the stage-2 model is trained with sigma >=
    truncate_sigma = 0.0075 only. Computes in float64, returns x_up's dtype. callback(i, x, denoised).
    project (our option, the analogue of SR's --project): every denoised estimate D(x, sigma), and so the output,
    is replaced by TileMeanProjection(its tile means := x_up's, project_smooth). With project_smooth 0 this sets
    the DC coefficient of each tile (blur factor 1 at every t) to the input's, so the tile means of x follow the
    input plus the sampler's noise exactly and the output's tile means equal x_up's.
    """
    if heun_noise not in ('reuse', 'fresh'):
        raise ValueError(f"heun_noise must be 'reuse' or 'fresh', got {heun_noise!r}")
    H, W = x_up.shape[-2:]
    sig = edm_sigmas(steps, sigma_min, sigma_max, rho, x_up.device)
    sig = sig[sig < truncation_sigma]
    if len(sig) == 0:
        raise ValueError(f'relay_sampler: no sigma of the {steps}-step grid is below '
                         f'truncation_sigma={truncation_sigma}')
    out_dtype, x_up = x_up.dtype, x_up.to(torch.float64)
    dct, idct = (lambda z: dct_2d(z, block)), (lambda z: idct_2d(z, block))
    t_of = lambda s: sigma_to_t(s, prob_length=truncation_t)
    alpha = lambda s: expand_factors(blur_factors(t_of(s), block, blur_sigma_max, 1e-3), H, W)  # (1, 1, H, W)
    project_fn = TileMeanProjection(F.avg_pool2d(x_up, block), block, project_smooth) if project else None

    def Dx(x, s):
        denoised = _call(D, x, s)
        return denoised if project_fn is None else project_fn(denoised)

    def noise():  # unit Gaussian plus s_block block noise, as in training
        n = _randn(x_up.shape, x_up, generator)
        return n + s_block * block_noise(x_up, block, generator) if s_block > 0 else n

    x = x_up + sig[0] * noise()
    for i in _progress(range(len(sig) - 1), progress):
        s_cur, s_next = sig[i], sig[i + 1]
        a_cur, a_next = alpha(s_cur), alpha(s_next)
        g = math.sqrt(1 - s_noise ** 2) * s_next / s_cur
        A, Bc = a_next + g - g * a_cur, s_cur * (g * a_cur - a_next)
        u_cur = dct(x)
        denoised = Dx(x, s_cur)
        d_cur = (u_cur - dct(denoised)) / s_cur
        z = s_noise * s_next * noise()
        x_next = idct(A * u_cur + Bc * d_cur) + z  # Euler (predictor) step
        # 2nd-order correction: re-take the step from u_cur with the average of the two slopes, then add
        # fresh noise (official) or the predictor's z again (heun_noise='reuse'; see the docstring).
        denoised = Dx(x_next, s_next)
        d_prime = (dct(x_next) - dct(denoised)) / s_next
        if heun_noise == 'fresh':
            z = s_noise * s_next * noise()
        x = idct(A * u_cur + Bc * (d_cur + d_prime) / 2) + z
        if callback is not None:
            callback(i, x, denoised)
    denoised = Dx(x, sig[-1])
    if callback is not None:
        callback(len(sig) - 1, denoised, denoised)
    return denoised.to(out_dtype)


def relay_generate(D1, D2, n, res1, block=4, steps_first=18, steps_second=18, generator=None, channels=3,
                   device=None, first_kwargs=None, **relay_kwargs):
    """Two-stage RDM generation: stage 1 edm_sampler at res1 x res1 from unit Gaussian latents, nearest
    upsampling by `block` (the stage-1 output is not clamped, as in the official 'both' path), stage 2
    relay_sampler. relay_kwargs go to relay_sampler, first_kwargs to edm_sampler. device defaults to the
    generator's (or cpu). Returns (low, high)."""
    device = device or (generator.device if generator is not None else 'cpu')
    latents = torch.randn((n, channels, res1, res1), generator=generator, device=device)
    low = edm_sampler(D1, latents, steps=steps_first, generator=generator, **(first_kwargs or {}))
    x_up = F.interpolate(low, scale_factor=block, mode='nearest')
    high = relay_sampler(D2, x_up, steps_second, block=block, generator=generator, **relay_kwargs)
    return low, high
