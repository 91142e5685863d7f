"""Tests for block_noise.py: blockwise DCT, block noise, DCT blur and the sigma <-> blur-time map."""
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.fft import dctn
from scipy.special import ndtr, ndtri

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import block_noise as bn  # noqa: E402


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def ref_block_dct(x, block):
    """Independent reference: scipy's orthonormal DCT-II on every tile, in float64 numpy."""
    x = np.asarray(x, dtype=np.float64)
    *lead, H, W = x.shape
    t = x.reshape(*lead, H // block, block, W // block, block)
    t = dctn(t, axes=(-3, -1), norm='ortho')
    return t.reshape(*lead, H, W)


# ----------------------------------------------------------------------------------------------
# DCT

def test_dct_matrix_matches_cosine_formula_and_is_orthonormal():
    for n in (1, 2, 4, 8):
        M = bn.dct_matrix(n).numpy()
        k, m = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
        ref = np.cos(np.pi * (2 * m + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        ref[0] /= np.sqrt(2.0)
        np.testing.assert_allclose(M, ref, atol=1e-14)
        np.testing.assert_allclose(M @ M.T, np.eye(n), atol=1e-13)


@pytest.mark.parametrize('block', [2, 4, 8])
def test_dct_2d_matches_scipy_per_tile(block):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64, generator=g)
    X = bn.dct_2d(x, block)
    assert X.shape == x.shape
    np.testing.assert_allclose(X.numpy(), ref_block_dct(x.numpy(), block), atol=1e-12)
    # exact inverse and norm preservation (per image and per tile)
    np.testing.assert_allclose(bn.idct_2d(X, block).numpy(), x.numpy(), atol=1e-12)
    np.testing.assert_allclose(X.pow(2).sum().item(), x.pow(2).sum().item(), rtol=1e-12)
    tile_x = x[..., :block, block:2 * block].pow(2).sum()
    tile_X = X[..., :block, block:2 * block].pow(2).sum()
    np.testing.assert_allclose(tile_X.item(), tile_x.item(), rtol=1e-12)


def test_dct_whole_image_and_leading_dims_and_float32():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 3, 8, 8, dtype=torch.float64, generator=g)  # 5-D, block == H == W
    X = bn.dct_2d(x, 8)
    np.testing.assert_allclose(X.numpy(), dctn(x.numpy(), axes=(-2, -1), norm='ortho'), atol=1e-12)
    # frequency (0, 0) of the whole image is 8 * mean
    np.testing.assert_allclose(X[..., 0, 0].numpy(), 8 * x.mean(dim=(-2, -1)).numpy(), atol=1e-12)
    x32 = x.float()
    X32 = bn.dct_2d(x32, 4)
    assert X32.dtype == torch.float32
    np.testing.assert_allclose(X32.numpy(), ref_block_dct(x.numpy(), 4), atol=1e-5)
    np.testing.assert_allclose(bn.idct_2d(X32, 4).numpy(), x32.numpy(), atol=1e-5)


def test_dct_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match='divisible'):
        bn.dct_2d(torch.zeros(1, 1, 10, 8), 4)
    with pytest.raises(ValueError, match='divisible'):
        bn.idct_2d(torch.zeros(1, 1, 8, 6), 4)


def test_dct_matrix_built_in_inference_mode_is_usable_with_autograd():
    bn.dct_matrix.cache_clear()
    with torch.inference_mode():
        bn.dct_2d(torch.zeros(1, 1, 4, 4), 4)  # first use inside a sampler
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    bn.dct_2d(x, 4).pow(2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Block noise

def test_block_noise_unit_variance_and_correlation_structure():
    b = 4
    g = torch.Generator().manual_seed(2)
    n = bn.block_noise((256, 1, 32, 32), b, generator=g, dtype=torch.float64)
    assert n.shape == (256, 1, 32, 32) and n.dtype == torch.float64
    assert abs(n.mean().item()) < 0.02
    assert abs(n.var().item() - 1) < 0.03
    # correlation of pixels at offset (dx, dy): overlap of two b x b windows / b^2
    for dx in range(-b, b + 1):
        for dy in range(0, b + 1):
            c = (n * torch.roll(n, shifts=(dx, dy), dims=(-2, -1))).mean().item()
            expect = max(b - abs(dx), 0) * max(b - abs(dy), 0) / b ** 2
            assert abs(c - expect) < 0.03, (dx, dy, c, expect)


def test_block_noise_shape_handling_and_reproducibility():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    a = bn.block_noise(x, 4, generator=torch.Generator().manual_seed(5))
    b = bn.block_noise(x, 4, generator=torch.Generator().manual_seed(5))
    c = bn.block_noise(x, 4, generator=torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    # it is the official construction: sum of the block*block circular shifts of one field, / block
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = sum(torch.roll(g, (i, j), (-2, -1)) for i in range(4) for j in range(4)) / 4
    torch.testing.assert_close(a, ref)
    # block 1 is white noise
    torch.testing.assert_close(bn.block_noise(x, 1, generator=torch.Generator().manual_seed(5)), g)


# ----------------------------------------------------------------------------------------------
# Blur

def test_blur_factors_formula_and_identity_at_t0():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    for min_scale in (0.0, 1e-3, 0.2):
        f = bn.blur_factors(t, 4, blur_sigma_max=3.0, min_scale=min_scale)
        assert f.shape == (3, 1, 4, 4)
        torch.testing.assert_close(f[0], torch.ones(1, 4, 4, dtype=torch.float64))  # t = 0: no blur at all
        s = 3.0 * math.sin(math.pi * 0.3 / 2) ** 2
        w2 = (math.pi * 1 / 4) ** 2 + (math.pi * 2 / 4) ** 2
        assert abs(f[1, 0, 1, 2].item() - ((1 - min_scale) * math.exp(-w2 * s * s / 2) + min_scale)) < 1e-12
        assert torch.all(f[:, 0, 0, 0] == 1)  # the tile mean is never blurred
        assert torch.all(f[2] <= f[1]) and torch.all(f[1] <= f[0])  # more blur later
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(bn.dct_blur(x, 4, 0.0), x)
    torch.testing.assert_close(bn.apply_factors(x, 4, bn.blur_factors(torch.zeros(2), 4)), x)


def test_full_blur_is_nearest_upsampled_low_res():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=g)
    low_up = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode='nearest')
    torch.testing.assert_close(bn.dct_blur(x, 4, float('inf'), min_scale=0.0), low_up)
    torch.testing.assert_close(bn.dct_blur(x, 4, 1e3, min_scale=0.0), low_up)
    # per-sample blur strengths: sample 0 untouched, sample 1 fully blurred
    y = bn.dct_blur(x, 4, torch.tensor([0.0, float('inf')], dtype=torch.float64), min_scale=0.0)
    torch.testing.assert_close(y[0], x[0])
    torch.testing.assert_close(y[1], low_up[1])


def test_sigma_t_map_matches_normal_cdf_and_round_trips():
    sigma = torch.logspace(-3, 0.5, 30, dtype=torch.float64)
    t = bn.sigma_to_t(sigma, P_mean=-1.2, P_std=1.2, prob_length=0.93)
    ref = ndtr((np.log(sigma.numpy()) + 1.2) / 1.2) / 0.93
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-9)
    torch.testing.assert_close(bn.t_to_sigma(t, prob_length=0.93), sigma, rtol=1e-10, atol=0)
    # t = 1 is the prob_length quantile of EDM's log-normal
    assert abs(bn.t_to_sigma(1.0).item() - math.exp(-1.2 + 1.2 * ndtri(0.93))) < 1e-10
    assert abs(bn.sigma_to_t(bn.t_to_sigma(1.0)).item() - 1.0) < 1e-12
