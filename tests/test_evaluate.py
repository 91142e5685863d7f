"""metrics.py / evaluate.py / plots.py: metric recipes against hand computations / scikit-image, the CLI, the loss plot."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import evaluate as ev  # noqa: E402
import metrics  # noqa: E402
import plots  # noqa: E402


def on_grid(x):
    """Snap [-1,1] floats to the uint8 grid (as a loaded PNG is), so references see the same uint8 values."""
    u = np.round((np.clip(np.asarray(x, dtype=np.float64), -1, 1) + 1) / 2 * 255)
    return torch.from_numpy(u / 127.5 - 1)


def rand_img(gen, b=2, h=32, w=40):
    return on_grid(torch.rand(b, 3, h, w, generator=gen, dtype=torch.float64) * 2 - 1)


def smooth_img(gen, b=2, h=48, w=48):
    """Low-frequency images (bilinear-upsampled coarse noise): SSIM well inside (0, 1)."""
    coarse = torch.rand(b, 3, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1
    return on_grid(torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False))


def to_u8(x):
    """Reference quantization in numpy float64: clamp, [0,1], x255, round."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1, 1)
    return np.round((x + 1) / 2 * 255).astype(np.uint8)


# ------------------------------------------------------------------ quantization + PSNR

def test_quantize_convention():
    # values given on the [0,1] scale, mapped to [-1,1] as the models output them
    v01 = torch.tensor([0.0, 0.0039, 0.0019, 0.5, 1.0, 1.7, -0.3], dtype=torch.float64)
    q = metrics.quantize(v01 * 2 - 1)
    # 0.0039*255 = 0.9945 -> 1, 0.0019*255 = 0.48 -> 0, 0.5*255 = 127.5 -> 128 (half to even), clamps
    assert q.tolist() == [0, 1, 0, 128, 255, 255, 0]
    assert q.dtype == torch.float64


def test_psnr_matches_numpy():
    g = torch.Generator().manual_seed(0)
    pred, gt = rand_img(g), rand_img(g)
    gt[1] = on_grid(pred[1] + 0.05 * torch.randn(pred[1].shape, generator=g, dtype=torch.float64))
    assert torch.equal(metrics.quantize(pred), torch.from_numpy(to_u8(pred).astype(np.float64)))
    ours = metrics.psnr(pred, gt)
    assert ours.shape == (2,)
    for i in range(2):
        a = to_u8(pred[i]).astype(np.float64)
        b = to_u8(gt[i]).astype(np.float64)
        ref = 20 * math.log10(255.0 / math.sqrt(np.mean((a - b) ** 2)))
        assert abs(ours[i].item() - ref) < 1e-9
    assert ours[1] > ours[0] + 10  # the near copy is much closer than an unrelated image


def test_psnr_identical_is_inf_and_quantization_matters():
    g = torch.Generator().manual_seed(1)
    x = rand_img(g, b=1)
    assert math.isinf(metrics.psnr(x, x)[0].item())
    # on the uint8 grid, a shift of 0.2 grey level rounds away (inf), 1 grey level does not
    assert math.isinf(metrics.psnr(x, x + 0.2 * 2 / 255)[0].item())
    assert abs(metrics.psnr(x, (x + 2 / 255).clamp(-1, 1))[0].item() - 48.13) < 0.1  # MSE ~1 -> 20 log10 255
    assert math.isfinite(metrics.psnr(x, x + 4 / 255)[0].item())


# ------------------------------------------------------------------ SSIM

@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_matches_skimage(kind):
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(2)
    make = rand_img if kind == "random" else smooth_img
    pred = make(g)
    gt = on_grid(pred + 0.3 * make(g)) if kind == "smooth" else make(g)
    ours = metrics.ssim(pred, gt)
    for i in range(pred.shape[0]):
        a = to_u8(pred[i]).transpose(1, 2, 0)
        b = to_u8(gt[i]).transpose(1, 2, 0)
        # gaussian_weights -> 11 taps (truncate 3.5), map cropped by (11-1)//2 = 5 px per side = our 'valid'
        ref = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255, channel_axis=2)
        assert abs(ours[i].item() - ref) < 1e-10, (kind, ours[i].item(), ref)
    if kind == "smooth":
        assert 0.2 < ours.min() < ours.max() < 0.999


def test_ssim_identity_bounds_and_y_channel():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    x = smooth_img(g, b=3)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)
    y = on_grid(x + 0.2 * rand_img(g, b=3, h=48, w=48))
    s = metrics.ssim(y, x)
    assert s.shape == (3,) and (s < 0.99).all() and (s > -1).all()
    assert torch.allclose(metrics.ssim(y, x), metrics.ssim(x, y))
    # Y channel: BT.601 studio-swing luma from the uint8 RGB values, unrounded
    a = to_u8(y[0]).astype(np.float64)
    b = to_u8(x[0]).astype(np.float64)
    lum = lambda u: 16 + (65.481 * u[0] + 128.553 * u[1] + 24.966 * u[2]) / 255  # noqa: E731
    assert 16 <= lum(a).min() and lum(a).max() <= 235
    ref = skm.structural_similarity(lum(a), lum(b), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
    assert abs(metrics.ssim(y, x, y_channel=True)[0].item() - ref) < 1e-10


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError):
        metrics.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------ flat_noise (residual noise)

def _half_flat(g, s0=0.02, b=2, n=64):
    """Left half: a smooth ramp + weak white noise of std s0 (the 'flat' pixels); right half: strong texture."""
    ramp = torch.linspace(-0.5, 0.5, n, dtype=torch.float64).view(1, 1, 1, n).expand(b, 3, n, n).clone()
    img = ramp + s0 * torch.randn(b, 3, n, n, generator=g, dtype=torch.float64)
    img[..., n // 2:] += 0.4 * torch.randn(b, 3, n, n // 2, generator=g, dtype=torch.float64)
    return img


def test_flat_noise_against_white_noise_closed_form():
    g = torch.Generator().manual_seed(7)
    gt = _half_flat(g)
    assert torch.allclose(metrics.flat_noise(gt, gt), torch.ones(2))
    # the high-pass is linear and its gain on independent white noise is the same for any variance, so adding
    # independent noise of std s to the flat pixels' s0 gives sqrt((s0^2 + s^2) / s0^2) there: sqrt(2), sqrt(10)
    for s, expect in ((0.02, 2 ** 0.5), (0.06, 10 ** 0.5)):
        noisy = gt + s * torch.randn(gt.shape, generator=g, dtype=torch.float64)
        assert torch.allclose(metrics.flat_noise(noisy, gt), torch.full((2,), expect, dtype=torch.float32),
                              rtol=0.06), (s, metrics.flat_noise(noisy, gt))
    # noise only where the image is textured is not counted; blurring gives < 1
    textured_only = gt.clone()
    textured_only[..., 32:] += 0.1 * torch.randn(2, 3, 64, 32, generator=g, dtype=torch.float64)
    assert (metrics.flat_noise(textured_only, gt) - 1).abs().max() < 0.1
    blurred = torch.nn.functional.avg_pool2d(gt, 3, 1, 1, count_include_pad=False)
    assert metrics.flat_noise(blurred, gt).max() < 0.6
    assert metrics.flat_noise(gt[0], gt[0]).shape == (1,)  # a single (3, H, W) image


# ------------------------------------------------------------------ grid_texture (the LR-cell texture)

def test_grid_texture_against_closed_form():
    g = torch.Generator().manual_seed(3)
    white = torch.randn(4, 3, 64, 64, generator=g, dtype=torch.float64)
    # white noise has no grid: every neighbour difference has variance 2 s^2 -> ratio 1
    assert (metrics.grid_texture(white, 4) - 1).abs().max() < 0.05
    # nearest-upsampled cells of std b plus white noise of std s: across a border the difference has variance
    # 2 b^2 + 2 s^2, inside a cell 2 s^2 -> 1 + b^2 / s^2 = 5 for b = 2 s
    cells = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    cells = cells.repeat_interleave(4, -1).repeat_interleave(4, -2)
    blocky = 2 * cells + white
    ratio = metrics.grid_texture(blocky, 4)
    assert torch.allclose(ratio, torch.full((4,), 5.0), rtol=0.1), ratio
    # the same cells shifted off the grid by 2 pixels are not aligned with it: the ratio falls below 1 there
    assert metrics.grid_texture(blocky.roll(2, -1).roll(2, -2), 4).max() < 1
    assert metrics.grid_texture(white[0], 4).shape == (1,)
    assert metrics.grid_texture(cells, 4).isinf().all()  # nearest upsampling: flat inside every cell
    assert metrics.grid_texture(torch.zeros(1, 3, 8, 8), 4).item() == 1  # a constant image has no texture at all
    # compute_metrics reports it with the scale taken from the LR size
    lr = white[:, :, :16, :16]
    per_image = metrics.compute_metrics(blocky.clamp(-1, 1).float(), blocky.clamp(-1, 1).float(), lr.float())
    assert len(per_image["grid_texture"]) == 4 and min(per_image["grid_texture"]) > 1.5


# ------------------------------------------------------------------ consistency

def test_consistency():
    data = pytest.importorskip("data")
    g = torch.Generator().manual_seed(4)
    hr = smooth_img(g, b=2, h=64, w=64).float()
    hr = metrics.quantize(hr).float() / 127.5 - 1  # on the uint8 grid, as a loaded image
    lr = torch.stack([data.resize(h, (16, 16)) for h in hr])
    c = metrics.consistency(hr, lr)
    assert c.shape == (2,)
    assert c.max() < 1e-9  # the hr that produced lr is perfectly consistent with it
    noisy = hr + 0.2 * torch.randn(hr.shape, generator=g)
    blurred = torch.nn.functional.avg_pool2d(hr, 2).repeat_interleave(2, -1).repeat_interleave(2, -2) + 0.3
    assert (metrics.consistency(noisy, lr) > 1e-5).all()
    assert (metrics.consistency(blurred, lr) > 1e-3).all()


# ------------------------------------------------------------------ compute_metrics, folders, CLI

def save_png(path, x):
    from PIL import Image
    Image.fromarray(to_u8(x).transpose(1, 2, 0)).save(path)


@pytest.fixture
def folders(tmp_path):
    g = torch.Generator().manual_seed(5)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    imgs = smooth_img(g, b=3, h=32, w=32)
    for i, x in enumerate(imgs):
        save_png(gt / f"{i:03d}.png", x)
        save_png(pred / f"{i:03d}.png", (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)))
    return pred, gt, imgs


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # a loaded machine


def test_compute_metrics_and_evaluate_dirs(folders):
    pytest.importorskip("data")
    pred, gt, imgs = folders
    res = ev.evaluate_dirs(str(pred), str(gt), use_lpips=False)
    assert res["n"] == 3 and 15 < res["psnr"] < 40 and 0 < res["ssim"] < 1
    per = metrics.compute_metrics(imgs, imgs)
    assert len(per["psnr"]) == 3 and all(math.isinf(p) for p in per["psnr"])
    assert per["ssim"] == pytest.approx([1.0] * 3)


def test_cli_json(folders, capsys):
    pytest.importorskip("data")
    pred, gt, _ = folders
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--json", "--no-lpips"]) == 0
    stdout = capsys.readouterr().out
    assert len(stdout.strip().splitlines()) == 1
    out = json.loads(stdout)
    assert out["n"] == 3 and set(out) >= {"psnr", "ssim", "n"}
    assert out["psnr"] == pytest.approx(ev.evaluate_dirs(str(pred), str(gt), use_lpips=False)["psnr"])


def test_cli_table_in_process(folders, capsys):
    pytest.importorskip("data")
    pred, gt, _ = folders
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--no-lpips"]) == 0
    out = capsys.readouterr().out
    assert "11x11 gaussian" in out and "psnr" in out and "lpips" in out and "n images: 3" in out


def test_cli_mismatched_names(folders, tmp_path):  # a real process: exit status, stderr
    pytest.importorskip("data")
    pred, _, imgs = folders
    other = tmp_path / "other"
    other.mkdir()
    save_png(other / "zzz.png", imgs[0])
    r = run_cli("--pred", pred, "--gt", other, "--json")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr
    assert str(pred) in lines[0] and str(other) in lines[0]


def test_cli_errors_in_process(folders, tmp_path, capsys):
    pytest.importorskip("data")
    pred, gt, _ = folders
    assert ev.main(["--pred", str(tmp_path / "nope"), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and len(err.strip().splitlines()) == 1
    save_png(pred / "000.png", smooth_img(torch.Generator().manual_seed(6), b=1, h=24, w=24)[0])
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "000.png" in err and len(err.strip().splitlines()) == 1


def test_lpips_fn_gives_a_net_or_a_reason_and_is_built_once():
    fn, reason = metrics.lpips_fn()
    assert (fn is None) == bool(reason)
    assert metrics.lpips_fn() is metrics.lpips_fn()  # built once


def test_lpips_fn_needs_weights_on_disk(tmp_path, monkeypatch):
    """With fake `lpips` / `torchvision` modules: no weights file -> None + reason, nothing built;
    weights present -> built once, and fed [-1,1] images."""
    import types
    seen = []

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            seen.append(net)

        def forward(self, a, b):
            assert a.min() < -0.5 and a.max() <= 1  # [-1,1], not [0,1]
            return (a - b).abs().mean((1, 2, 3), keepdim=True)

    pkg = tmp_path / "lpips"
    (pkg / "weights" / "v0.1").mkdir(parents=True)
    fake = types.SimpleNamespace(__file__=str(pkg / "__init__.py"), LPIPS=FakeLPIPS)
    url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    models = types.SimpleNamespace(AlexNet_Weights=types.SimpleNamespace(IMAGENET1K_V1=types.SimpleNamespace(url=url)))
    monkeypatch.setitem(sys.modules, "lpips", fake)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    fn, reason = metrics.lpips_fn()
    assert fn is None and "alex.pth" in reason and "alexnet-owt-7be5be79.pth" in reason and not seen
    monkeypatch.setattr(metrics, "_LPIPS", {})
    (pkg / "weights" / "v0.1" / "alex.pth").write_bytes(b"x")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    fn, reason = metrics.lpips_fn()
    assert fn is not None and reason == "" and seen == ["alex"]
    assert metrics.lpips_fn()[0] is fn and seen == ["alex"]
    x = torch.full((2, 3, 16, 16), -0.9)
    out = metrics.compute_metrics(x, x.clone().fill_(0.9), lpips=fn)["lpips"]
    assert out == pytest.approx([1.8, 1.8])


# ------------------------------------------------------------------ plot

def test_plot_loss(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1) + 0.01 * (s % 3)}) for s in range(50)]
    lines += [json.dumps({"step": s, "psnr": 20 + s / 10, "ssim": 0.5 + s / 200, "bicubic_psnr": 22.8, "eval_steps": 5,
                          "eval": True}) for s in (10, 30, 49)]
    log.write_text("\n".join(lines) + '\n{"step": 50, "lo')  # truncated last line of a live run
    out = tmp_path / "plots" / "loss.png"
    assert plots.plot_loss(str(log), str(out)) is True
    from PIL import Image
    im = Image.open(out)
    assert im.size == (3 * 500, 360)  # three 5-inch panels at 100 dpi: loss, psnr, ssim (not the baseline, not steps)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert plots.plot_loss(str(empty), str(tmp_path / "e.png")) is False
    assert not (tmp_path / "e.png").exists()
    assert plots.plot_loss(str(tmp_path / "missing.jsonl"), str(tmp_path / "m.png")) is False


def test_ema_debiased():
    assert plots.ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    s = plots.ema([0.0] * 10 + [1.0] * 10, 0.9)
    assert s[9] == 0 and 0 < s[10] < s[-1] < 1
