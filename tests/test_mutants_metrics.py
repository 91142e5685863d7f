"""Tests for the survivors of a full mutmut run over metrics.py (issue 31): the diagnostics (high-pass, flat_noise,
grid_texture), SSIM on the smallest images, the Y-channel metrics, consistency and every key of compute_metrics,
each against a float64 reference written here from the recipe in metrics' docstring (explicit loops or NumPy /
SciPy / PIL, never metrics itself), plus the counts and messages of the KID / FID plumbing and pixel_frechet's
edges. results/reliability/metrics_survivors.md maps each survivor to the test that kills it."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import metrics
from test_mutants import _Flat, _points  # the 4-pixel feature network and its inputs
from test_mutants2 import _stand_in_inception  # torch-fidelity's Inception replaced by a recording stand-in

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- references (float64, by hand)
def _u8(shape, seed):
    """Random uint8 images as int64 values 0..255."""
    return np.random.default_rng(seed).integers(0, 256, size=shape)


def _img(u):
    """uint8 values -> [-1, 1] float32 on the uint8 grid (metrics.quantize gives u back exactly)."""
    return torch.from_numpy(np.asarray(u, dtype=np.float64) / 127.5 - 1).float()


def _luma(u):
    """(B, 3, H, W) 0-255 -> (B, 1, H, W): BT.601 studio swing, 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    u = np.asarray(u, dtype=np.float64)
    return (16 + (65.481 * u[:, 0] + 128.553 * u[:, 1] + 24.966 * u[:, 2]) / 255)[:, None]


def _psnr(a, b):
    return [10 * math.log10(255.0 ** 2 / np.mean((np.asarray(x, float) - y) ** 2)) for x, y in zip(a, b)]


def _ssim(a, b):
    """Wang 2004 SSIM per image from its definition: at each position where the 11x11 window fits, window weights
    w = g g^T (g: Gaussian taps, sigma 1.5, normalized), local means, variances and covariance under w,
    C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2; the mean over positions and channels."""
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for x, y in zip(np.asarray(a, float), np.asarray(b, float)):
        vals = []
        for xc, yc in zip(x, y):
            for i in range(xc.shape[0] - 10):
                for j in range(xc.shape[1] - 10):
                    p, q = xc[i:i + 11, j:j + 11], yc[i:i + 11, j:j + 11]
                    mp, mq = (w * p).sum(), (w * q).sum()
                    vp, vq, cpq = (w * p * p).sum() - mp ** 2, (w * q * q).sum() - mq ** 2, (w * p * q).sum() - mp * mq
                    vals.append((2 * mp * mq + c1) * (2 * cpq + c2) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2)))
        out.append(np.mean(vals))
    return out


def _reflect(i, n):
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def _high_pass(a, sigma=1.0, radius=3):
    """One channel (H, W): a - its Gaussian blur (taps exp(-t^2 / 2 sigma^2), |t| <= r, normalized; r = radius cut
    to H - 1 and W - 1 so that reflect padding stays inside the image), rows first, then columns, reflected edges."""
    a = np.asarray(a, dtype=np.float64)
    H, W = a.shape
    r = min(radius, H - 1, W - 1)
    taps = np.array([math.exp(-t * t / (2 * sigma * sigma)) for t in range(-r, r + 1)])
    taps /= taps.sum()
    rows = np.array([[sum(taps[t + r] * a[y, _reflect(x + t, W)] for t in range(-r, r + 1)) for x in range(W)]
                     for y in range(H)])
    blur = np.array([[sum(taps[t + r] * rows[_reflect(y + t, H), x] for t in range(-r, r + 1)) for x in range(W)]
                     for y in range(H)])
    return a - blur


def _flat_noise(pred, gt, q=0.3):
    """Per image: e = mean over channels of hp^2; the flattest pixels are those whose mean of gt's e over the 5x5
    neighbours inside the image is <= its q-quantile (linear interpolation between order statistics); the result
    is sqrt(sum of pred's e there / sum of gt's e there)."""
    out = []
    for p, g in zip(np.asarray(pred, float), np.asarray(gt, float)):
        e_p = np.mean([_high_pass(c) ** 2 for c in p], 0)
        e_g = np.mean([_high_pass(c) ** 2 for c in g], 0)
        H, W = e_g.shape
        local = np.array([[e_g[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].mean() for x in range(W)] for y in range(H)])
        s = np.sort(local.ravel())
        pos = q * (s.size - 1)
        lo = int(math.floor(pos))
        thr = s[lo] + (pos - lo) * (s[min(lo + 1, s.size - 1)] - s[lo])
        mask = local <= thr
        out.append(math.sqrt(e_p[mask].sum() / e_g[mask].sum()))
    return out


def _grid_texture(pred, s):
    """Per image: (mean squared difference of horizontal neighbours across a cell border, x = s k - 1 | s k, plus
    the same for vertical ones) over (the same two means for neighbours inside a cell); inf if only the borders
    differ, 1 if nothing does."""
    out = []
    for p in np.asarray(pred, float):
        on, off = 0.0, 0.0
        for axis in (2, 1):  # horizontal, then vertical neighbours; the pair index first
            d = np.moveaxis(np.diff(p, axis=axis) ** 2, axis, 0)
            border = np.arange(d.shape[0]) % s == s - 1
            on += d[border].mean()
            off += d[~border].mean()
        out.append(on / off if off > 0 else (math.inf if on > 0 else 1.0))
    return out


def _consistency(pred_u8, lr_u8):
    """MSE on [0, 1] of PIL's bicubic reduction of pred's uint8 image to lr's size vs lr's uint8 image."""
    out = []
    for p, l in zip(pred_u8, lr_u8):
        h, w = l.shape[-2:]
        down = np.asarray(Image.fromarray(p.transpose(1, 2, 0).astype(np.uint8)).resize((w, h), Image.BICUBIC))
        out.append(np.mean(((down.transpose(2, 0, 1).astype(float) - l) / 255.0) ** 2))
    return out


def _frechet(x, y):
    """FD of Gaussians fit to the rows of x and y (covariance n - 1): |mx - my|^2 + tr(Sx + Sy - 2 (Sx Sy)^(1/2))."""
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = scipy.linalg.sqrtm(sx @ sy).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * root))


# ----------------------------------------------------------------------------- high-pass, flat_noise, grid_texture
@pytest.mark.parametrize("shape", [(1, 3, 9, 8), (2, 2, 4, 5), (1, 3, 2, 9), (1, 3, 9, 3)])
def test_high_pass_matches_the_blur_written_out(shape):
    """9x8: the full radius 3 and reflected edges; 4x5 on 2 channels: cut to 3 by H - 1; 2x9: radius 1 (H - 1);
    9x3: radius 2 (W - 1). Every pixel of every channel, against the explicit sums."""
    z = torch.from_numpy(np.random.default_rng(sum(shape)).normal(size=shape))
    hp = metrics._high_pass(z.float())
    assert hp.dtype == torch.float64 and hp.shape == shape
    ref = np.array([[_high_pass(c) for c in b] for b in z.float().double().numpy()])
    np.testing.assert_allclose(hp.numpy(), ref, rtol=0, atol=1e-10)


def test_high_pass_uses_its_sigma_and_radius():
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, 9, 9)))
    for sigma, radius in ((0.7, 3), (2.0, 2), (1.0, 1)):
        np.testing.assert_allclose(metrics._high_pass(z, sigma=sigma, radius=radius)[0, 0].numpy(),
                                   _high_pass(z[0, 0].numpy(), sigma, radius), rtol=0, atol=1e-10)


def _textured_pairs(n, b=2):
    """gt: b different images, a smooth ramp with weak noise on the left, strong texture on the right; pred: gt
    plus noise of another strength in each image."""
    rng = np.random.default_rng(n)
    ramp = np.linspace(-0.5, 0.5, n)[None, None, None, :]
    gt = ramp + 0.02 * rng.normal(size=(b, 3, n, n))
    gt[..., n // 2:] += 0.4 * rng.normal(size=(b, 3, n, n - n // 2))
    pred = gt + np.array([0.03, 0.08][:b])[:, None, None, None] * rng.normal(size=gt.shape)
    return torch.from_numpy(pred), torch.from_numpy(gt)


def test_flat_noise_matches_its_recipe_image_by_image():
    """Two different images in one batch (each with its own threshold), the default quantile 0.3 on 12x12, and
    quantile 0.25 on 9x9, where 0.25 * (81 - 1) = 20 is an order statistic: the pixel at the threshold counts."""
    for n, q in ((12, 0.3), (9, 0.25)):
        pred, gt = _textured_pairs(n)
        ours = metrics.flat_noise(pred, gt) if q == 0.3 else metrics.flat_noise(pred, gt, quantile=q)
        assert ours.dtype == torch.float32 and ours.shape == (2,)
        assert ours.tolist() == pytest.approx(_flat_noise(pred.numpy(), gt.numpy(), q), rel=1e-6)


def test_grid_texture_matches_its_recipe_image_by_image():
    """Two different non-square images (9x12) with cells of 3: horizontal and vertical neighbours differ in each,
    every mean difference is below 1 (values in [-1, 1])."""
    pred = torch.from_numpy(np.random.default_rng(2).uniform(-0.5, 0.5, size=(2, 3, 9, 12)))
    pred[1, :, :, ::2] *= 0.3  # the second image: weaker horizontal differences
    ours = metrics.grid_texture(pred, 3)
    assert ours.dtype == torch.float32
    assert ours.tolist() == pytest.approx(_grid_texture(pred.numpy(), 3), rel=1e-6)


def test_grid_texture_of_low_contrast_nearest_upsampling_is_infinite():
    """Cells of +-0.1 (squared differences 0.04 across borders, 0 inside): inf, not 1 (only a constant image is 1)."""
    cells = torch.tensor([[0.1, -0.1], [-0.1, 0.1]]).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert metrics.grid_texture(cells.expand(1, 3, 8, 8), 4).tolist() == [math.inf]
    assert _grid_texture(cells.expand(1, 3, 8, 8).numpy(), 4) == [math.inf]


# ----------------------------------------------------------------------------- SSIM, PSNR and the Y channel
def test_ssim_on_the_smallest_images_matches_its_definition():
    """11x11 (one window position), 11x13 and 12x11, RGB and Y, against the windowed sums written out."""
    for h, w in ((11, 11), (11, 13), (12, 11)):
        a, b = _u8((2, 3, h, w), h * w), _u8((2, 3, h, w), h * w + 1)
        a[1] = np.clip(b[1] + np.random.default_rng(0).integers(-20, 21, size=b[1].shape), 0, 255)  # a near copy
        ours = metrics.ssim(_img(a), _img(b))
        assert ours.dtype == torch.float64 and ours.tolist() == pytest.approx(_ssim(a, b), abs=1e-10)
        assert metrics.ssim(_img(a), _img(b), y_channel=True).tolist() == pytest.approx(
            _ssim(_luma(a), _luma(b)), abs=1e-10)


@pytest.mark.parametrize("h,w", [(10, 12), (12, 10), (10, 11), (11, 10)])
def test_ssim_below_11_pixels_in_either_direction_is_a_one_line_error(h, w):
    x = torch.zeros(1, 3, h, w)
    with pytest.raises(ValueError) as e:
        metrics.ssim(x, x)
    assert str(e.value) == f"SSIM needs images of at least 11x11, got {h}x{w}"


def test_psnr_on_the_y_channel_by_hand():
    a, b = _u8((2, 3, 6, 7), 3), _u8((2, 3, 6, 7), 4)
    assert metrics.psnr(_img(a), _img(b), y_channel=True).tolist() == pytest.approx(_psnr(_luma(a), _luma(b)),
                                                                                     rel=1e-12)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as e:
        metrics.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(3, 4, 5))
    assert str(e.value) == "pred (1, 3, 4, 4) and gt (1, 3, 4, 5) differ in shape"


# ----------------------------------------------------------------------------- consistency, compute_metrics
def _sr_case():
    """pred, gt (2, 3, 12, 16) and lr (2, 3, 3, 4): a non-square 4x case on the uint8 grid, pred != gt."""
    p, g, l = _u8((2, 3, 12, 16), 5), _u8((2, 3, 12, 16), 6), _u8((2, 3, 3, 4), 7)
    p[0] = np.clip(g[0] + np.random.default_rng(8).integers(-30, 31, size=g[0].shape), 0, 255)
    return p, g, l


def test_consistency_is_the_mse_of_pils_bicubic_reduction_on_the_unit_scale():
    p, _, l = _sr_case()
    assert metrics.consistency(_img(p), _img(l)).tolist() == pytest.approx(_consistency(p, l), rel=1e-12)


def test_compute_metrics_returns_each_documented_key_with_its_value():
    """Without options: psnr, ssim, flat_noise only. With y_channel and lr: psnr_y, ssim_y, consistency and
    grid_texture at scale hr / lr = 4 (12 // 3 = 16 // 4: taken from the widths, non-square)."""
    p, g, l = _sr_case()
    pred, gt, lr = _img(p), _img(g), _img(l)
    base = dict(psnr=_psnr(p, g), ssim=_ssim(p, g), flat_noise=_flat_noise(pred.double().numpy(), gt.double().numpy()))
    out = metrics.compute_metrics(pred, gt)
    assert set(out) == set(base)
    full = metrics.compute_metrics(pred, gt, lr, y_channel=True)
    expect = dict(base, psnr_y=_psnr(_luma(p), _luma(g)), ssim_y=_ssim(_luma(p), _luma(g)),
                  consistency=_consistency(p, l), grid_texture=_grid_texture(pred.double().numpy(), 4))
    assert set(full) == set(expect)
    for res in (out, full):
        for k, v in res.items():
            assert isinstance(v, list) and v == pytest.approx(expect[k], rel=1e-6), k


# ----------------------------------------------------------------------------- KID / FID plumbing
def test_kid_fid_with_unequal_fake_and_real_counts():
    """6 fake, 9 real: both counts check out; FID of the 4 pixels (own feature network) = the closed form."""
    fake, real = _points(6, 0), _points(9, 1)
    out = metrics.kid_fid(fake, real, 6, 9, feature=_Flat())
    assert out["kid_subset"] == 6 and math.isfinite(out["kid"])
    assert out["fid"] == pytest.approx(_frechet(fake.flatten(1).double().numpy(), real.flatten(1).double().numpy()),
                                       rel=1e-5)


def test_kid_fid_told_wrong_counts_names_both_pairs():
    with pytest.raises(ValueError) as e:
        metrics.kid_fid(_points(3, 0), _points(5, 1), 4, 6, use_kid=False, feature=_Flat())
    assert str(e.value) == "KID/FID were told 4 fake and 6 real images but got 3 and 5"


def test_fid_builds_and_feeds_the_fid_metric_only(monkeypatch):
    """fid() computes no KID: one metric built (2048-d default Inception), each batch fed to it once."""
    built, fed = _stand_in_inception(monkeypatch)
    metrics.fid(torch.zeros(3, 3, 4, 4), torch.ones(4, 3, 4, 4))
    assert built == [("fid", 2048, {})]
    assert [b.shape[0] for b in fed] == [3, 4]


# ----------------------------------------------------------------------------- pixel_frechet edges
def test_pixel_frechet_takes_vectors_and_one_or_all_principal_components():
    """(n, d) rows are images too. pcs = 1: the 1-D distance (mx - my)^2 + (sx - sy)^2 along real's top principal
    axis (numpy's eigh of real's covariance); pcs = d: an orthogonal change of axes, so the full distance."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)) * [2.0, 1.0, 0.5] + [0.3, 0.0, -0.2]
    y = rng.normal(size=(50, 3)) @ np.array([[1.5, 0.4, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.6]])
    full = _frechet(x, y)
    assert metrics.pixel_frechet(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(full, rel=1e-9)
    assert metrics.pixel_frechet(torch.from_numpy(x), torch.from_numpy(y), pcs=3) == pytest.approx(full, rel=1e-9)
    axis = np.linalg.eigh(np.cov(y, rowvar=False))[1][:, -1]
    px, py = x @ axis, y @ axis
    one = (px.mean() - py.mean()) ** 2 + (px.std(ddof=1) - py.std(ddof=1)) ** 2
    assert metrics.pixel_frechet(torch.from_numpy(x), torch.from_numpy(y), pcs=1) == pytest.approx(one, rel=1e-9)
