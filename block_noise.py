"""
Blockwise DCT, block noise and the DCT blur of Relay Diffusion (RDM, Teng et al., ICLR 2024).

RDM's second stage does not start from pure noise: it continues a low-resolution image, upsampled
with nearest neighbours (every `block x block` tile constant), through a *blurring diffusion*.

* The basis. Each non-overlapping `block x block` tile is described by its orthonormal 2-D DCT-II
  coefficients U[i, j], 0 <= i, j < block (frequency (0, 0) = block * tile mean). In that basis the
  blur is diagonal: coefficient (i, j) is multiplied by a factor a_ij(t) in [min_scale, 1].
* The blur (RDM's patch-wise blurring diffusion, after Rissanen et al. and Hoogeboom & Salimans):
      a_ij(t) = (1 - min_scale) * exp(-|w_ij|^2 * s(t)^2 / 2) + min_scale,  w_ij = pi * (i, j) / block
      s(t)    = blur_sigma_max * sin(pi * t / 2) ** 2
  t = 0 leaves the image untouched, large s keeps only the tile means, i.e. exactly the nearest-
  upsampled low-resolution image: the end point of the blurring process is the start of stage 2.
* The clock. RDM uses EDM's noise levels sigma and derives the blur time from them through EDM's
  training distribution ln sigma ~ N(P_mean, P_std^2): t = Phi((ln sigma - P_mean) / P_std) / prob_length.
* Block noise (RDM's block noise, as the official code builds it). The same sigma destroys less at
  high resolution, because neighbouring pixels average white noise away (the low frequencies keep a
  higher SNR). RDM adds noise that is correlated inside a block-sized window: sum a white Gaussian
  field over all block*block circular shifts and divide by block, so each pixel keeps unit variance
  while pixels at offset (dx, dy) have correlation (block - |dx|) (block - |dy|) / block^2.

Tensors are (..., H, W); DCT coefficients keep the image layout (tile (p, q) of the output holds the
coefficients of tile (p, q) of the input). No project imports.
"""
import functools
import math

import torch


# ----------------------------------------------------------------------------------------------
# Blockwise orthonormal DCT-II

@functools.lru_cache(maxsize=None)
def dct_matrix(n, dtype=torch.float64, device='cpu'):
    """Orthonormal DCT-II matrix M (n x n): M[k, m] = c_k cos(pi (2m + 1) k / (2n)), c_0 = sqrt(1/n),
    c_k = sqrt(2/n). M @ v is the DCT of a vector v, M.T @ V its inverse (M is orthogonal). Cached."""
    with torch.inference_mode(False):  # a normal tensor even if first built inside a sampler
        k = torch.arange(n, dtype=torch.float64)[:, None]
        m = torch.arange(n, dtype=torch.float64)[None, :]
        M = torch.cos(math.pi * (2 * m + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        M[0] /= math.sqrt(2.0)
        return M.to(dtype=dtype, device=device)


def _check(x, block):
    H, W = x.shape[-2:]
    if H % block or W % block:
        raise ValueError(f'image size {H}x{W} is not divisible by the DCT block size {block}')
    return H, W


def _tile_transform(x, block, A):
    """A X A^T for every block x block tile X of x (..., H, W): two matmuls on reshaped views, no permutes.
    First along the width (each row of W split into W/block pieces), then along the height."""
    H, W = _check(x, block)
    x = x.unflatten(-1, (W // block, block)) @ A.T  # (..., H, W/b, b): rows of every tile
    x = A @ x.reshape(*x.shape[:-3], H // block, block, W)  # (..., H/b, b, W): columns of every tile
    return x.reshape(*x.shape[:-3], H, W)


def dct_2d(x, block):
    """Orthonormal 2-D DCT-II of each block x block tile of the last two dims: U = M X M^T per tile.
    block == H == W transforms the whole image. Same shape and layout as x."""
    return _tile_transform(x, block, dct_matrix(block, x.dtype, x.device))


def idct_2d(X, block):
    """Exact inverse of dct_2d (orthonormal, so the inverse is the transpose): X = M^T U M per tile."""
    return _tile_transform(X, block, dct_matrix(block, X.dtype, X.device).T)


# ----------------------------------------------------------------------------------------------
# Block noise (RDM, 'block noise')

def block_noise(x_or_shape, block, generator=None, dtype=None, device=None):
    """RDM block noise with the shape (and, for a tensor, dtype/device) of `x_or_shape`.

    One white Gaussian field g; the output is sum over 0 <= i, j < block of roll(g, (i, j)) on the
    last two dims, divided by block (so every pixel has unit variance). Shifts wrap around (circular),
    as in the official code. block == 1 is plain white noise.
    """
    if torch.is_tensor(x_or_shape):
        shape = x_or_shape.shape
        dtype = dtype or x_or_shape.dtype
        device = device or x_or_shape.device
    else:
        shape = tuple(x_or_shape)
    g = torch.randn(shape, generator=generator, dtype=dtype or torch.float32, device=device)
    if block == 1:
        return g
    out = torch.zeros_like(g)
    for i in range(block):
        for j in range(block):
            out += torch.roll(g, shifts=(i, j), dims=(-2, -1))
    return out / block


# ----------------------------------------------------------------------------------------------
# The DCT blur and its schedule

def blur_sigma(t, blur_sigma_max=3.0):
    """RDM's blur schedule: s(t) = blur_sigma_max * sin(pi t / 2)^2 (the std of the Gaussian blur)."""
    t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
    return blur_sigma_max * torch.sin(t * math.pi / 2) ** 2


def sigma_factors(s, block, min_scale=1e-3):
    """Per-frequency attenuation of a Gaussian blur of std s (in pixels) in the tile DCT basis:
    (1 - min_scale) exp(-|w|^2 s^2 / 2) + min_scale, w = pi (i, j) / block. s: scalar or (B,);
    returns (B, 1, block, block) (B = 1 for a scalar). s = inf keeps only frequency (0, 0)."""
    s = torch.as_tensor(s, dtype=torch.float64) if not torch.is_tensor(s) else s
    s = s.reshape(-1, 1, 1, 1)
    w = math.pi * torch.arange(block, dtype=s.dtype, device=s.device) / block
    w2 = w[:, None] ** 2 + w[None, :] ** 2  # (block, block)
    decay = torch.where(w2 == 0, torch.ones_like(s), torch.exp(-w2 * s ** 2 / 2))  # 0 * inf is not nan here
    return (1 - min_scale) * decay + min_scale


def blur_factors(t, block, blur_sigma_max=3.0, min_scale=1e-3):
    """RDM blur factors at blur time t (scalar or (B,)): (B, 1, block, block), laid out like the DCT
    coefficients of one tile. t = 0 gives all ones."""
    return sigma_factors(blur_sigma(t, blur_sigma_max), block, min_scale)


def expand_factors(f, H, W):
    """Tile a (B, 1, block, block) factor over an H x W image: (B, 1, H, W), the layout of dct_2d."""
    block = f.shape[-1]
    return f.repeat(1, 1, H // block, W // block)


def apply_factors(x, block, f):
    """idct(f * dct(x)) for per-frequency factors f of shape (B, 1, block, block)."""
    H, W = _check(x, block)
    return idct_2d(dct_2d(x, block) * expand_factors(f, H, W).to(x.dtype), block)


def dct_blur(x, block, blur_sigma, min_scale=1e-3):
    """Blur x (B, C, H, W) with a Gaussian of std `blur_sigma` (scalar or (B,)) in the blockwise DCT
    basis (the official DCTBlur). Takes the blur std, not the time: use blur_sigma(t) or blur_factors.
    blur_sigma = inf with min_scale = 0 replaces every tile by its mean."""
    return apply_factors(x, block, sigma_factors(blur_sigma, block, min_scale).to(x.device))


# ----------------------------------------------------------------------------------------------
# EDM noise level <-> blur time (the official get_alpha_t / BlurLoss)

def sigma_to_t(sigma, P_mean=-1.2, P_std=1.2, prob_length=0.93):
    """t = Phi((ln sigma - P_mean) / P_std) / prob_length: the quantile of sigma under EDM's training
    distribution, stretched so that the quantile prob_length maps to t = 1."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64) if not torch.is_tensor(sigma) else sigma
    return torch.special.ndtr((torch.log(sigma) - P_mean) / P_std) / prob_length


def t_to_sigma(t, P_mean=-1.2, P_std=1.2, prob_length=0.93):
    """Inverse of sigma_to_t: sigma = exp(P_mean + P_std * Phi^-1(t * prob_length))."""
    t = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
    return torch.exp(P_mean + P_std * torch.special.ndtri(t * prob_length))
