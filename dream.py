"""
DREAM: Diffusion Rectification and Estimation-Adaptive Models (Zhou et al., CVPR 2024).

The idea in one paragraph. A diffusion model is trained on x_t built from the *true* noise eps,
but at sampling time it only ever sees x_t built from its *own* earlier estimates. DREAM closes
that gap during training: run the model once without gradients, take its estimate eps_hat, and
move x_t (and the target) part of the way towards what the model would have produced:

    delta   = eps - eps_hat                                   (the model's current error)
    x_t'    = x_t + lambda * sqrt(1 - a) * delta              (paper Eq. 9, "rectified" input)
    eps'    = eps + lambda * delta                            (paper Eq. 9, adjusted target)
    loss    = || eps_theta(x_t') - eps' ||                    (paper Eq. 10 / Algorithm 1)
    lambda  = (1 - a) ** (p / 2) = sqrt(1 - alpha_bar) ** p   (paper Sec. 4.2, "estimation-adaptive")

p = 0 is full rectification (lambda = 1); p -> infinity gives lambda -> 0, the standard loss.
This file has no project imports; `diffusion.py` (SR3) and `relay.py` (EDM / blur) call it.
"""
import math

import torch


def dream_lambda(alpha_bar, p):
    """lambda = (1 - alpha_bar) ** (p / 2). Works on floats and tensors; p = inf gives 0."""
    if p is None or math.isinf(p):
        return alpha_bar * 0.0 if torch.is_tensor(alpha_bar) else 0.0
    return (1.0 - alpha_bar) ** (p / 2.0)


def rectify_eps(eps_fn, x_t, eps, alpha_bar, p):
    """The SR3 / epsilon-prediction form of DREAM (Algorithm 1 of the paper).

    eps_fn(x) -> eps_hat is evaluated once here *without* gradients; the caller sets the model to
    eval mode for it (no dropout), see `diffusion.GaussianDiffusion.loss`. alpha_bar broadcasts
    against x_t (shape (B, 1, 1, 1)). Returns (x_t', eps'); the caller regresses eps_fn(x_t')
    (with gradients) onto eps'.
    """
    with torch.inference_mode():
        eps_hat = eps_fn(x_t)
    eps_hat = eps_hat.clone().to(eps.dtype)  # leave inference mode: a normal tensor again
    lam = dream_lambda(alpha_bar, p)
    delta = eps - eps_hat
    x_t_new = x_t + lam * torch.sqrt(1.0 - alpha_bar) * delta
    eps_new = eps + lam * delta
    return x_t_new, eps_new


def rectify_x0(denoise_fn, x_t, y, lam, blur=None):
    """DREAM for x0-predicting (EDM / relay) denoisers: our extension, in no official code base.

    For x_t = y + sigma * n and a denoiser D ~ E[y | x_t], the SR3 rule written in terms of the
    clean image is x_t' = x_t + lam * (D(x_t) - y): the input moves towards the model's own
    estimate, while the regression target stays y. For blurring diffusion the clean part of x_t is
    blur(y), so the correction is blurred the same way: x_t' = x_t + lam * blur(D(x_t) - y).
    `blur=None` is the identity. `lam` broadcasts against x_t.
    """
    with torch.inference_mode():
        d = denoise_fn(x_t)
    delta = d.clone().to(y.dtype) - y
    if blur is not None:
        delta = blur(delta)
    return x_t + lam * delta
