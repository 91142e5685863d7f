"""KID / FID (issue 12): the closed-form Frechet distance, torchmetrics' KID / FID plumbing with a feature network
of our own, and `evaluate.py --kid --fid` without torch-fidelity (one line on stderr, the other metrics still print)."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import evaluate as ev  # noqa: E402
import metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

D = 4
F64 = torch.float64
MU1, MU2 = torch.zeros(D, dtype=F64), torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)
S1, S2 = torch.tensor([0.2, 0.1, 0.05, 0.3], dtype=F64), torch.tensor([0.1, 0.1, 0.2, 0.05], dtype=F64)


class Flat(torch.nn.Module):
    """Our own 'feature network': the 4 pixel values of a (B, 1, 2, 2) 'image' are its features."""
    num_features = D

    def forward(self, x):
        return x.flatten(1)


def gaussian_images(mu, var, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (mu + var.sqrt() * torch.randn(n, D, generator=g, dtype=F64)).float().view(n, 1, 2, 2)


def diagonal_closed_form(mu1, s1, mu2, s2):
    return float((mu1 - mu2).pow(2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())


def test_frechet_distance_closed_form():
    exact = diagonal_closed_form(MU1, S1, MU2, S2)
    assert metrics.frechet_distance(MU1, torch.diag(S1), MU2, torch.diag(S2)) == pytest.approx(exact, abs=1e-9)
    assert metrics.frechet_distance(MU1, torch.diag(S1), MU1, torch.diag(S1)) == pytest.approx(0, abs=1e-9)
    # full (non-diagonal) covariances: rotating both by the same orthogonal Q changes nothing
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    s1, s2 = q @ torch.diag(S1) @ q.T, q @ torch.diag(S2) @ q.T
    assert metrics.frechet_distance(q @ MU1, s1, q @ MU2, s2) == pytest.approx(exact, abs=1e-9)
    # sigma1 = a^2 sigma, sigma2 = b^2 sigma: tr term = (a - b)^2 tr(sigma)
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sig = a @ a.T + 0.1 * torch.eye(D, dtype=torch.float64)
    assert metrics.frechet_distance(MU1, 4 * sig, MU1, sig) == pytest.approx(float(sig.trace()), rel=1e-9)


def test_torchmetrics_fid_with_own_features_matches_closed_form():
    """n = 20000 draws per side in 4-d: the sample means / covariances are off by O(1/sqrt(n)) ~ 0.7%, which moves
    this FID (0.312) by ~0.005 (seen over seeds: 0.311, 0.318, 0.313); 0.03 (10%, ~6 such deviations) still fails for a
    wrong mean (+0.09 for a 0.3 shift) or a wrong trace term (using sigma instead of sqrt gives a different value)."""
    exact = diagonal_closed_form(MU1, S1, MU2, S2)
    got = metrics.fid(gaussian_images(MU2, S2, 20000, 0), gaussian_images(MU1, S1, 20000, 1), feature=Flat())
    assert got == pytest.approx(exact, abs=0.03)
    same = metrics.fid(gaussian_images(MU1, S1, 20000, 2), gaussian_images(MU1, S1, 20000, 3), feature=Flat())
    assert abs(same) < 0.01 < exact - 0.2


def test_kid_own_features_zero_for_same_distribution_positive_for_shifted():
    a, b = gaussian_images(MU1, S1, 400, 4), gaussian_images(MU1, S1, 400, 5)
    torch.manual_seed(0)  # torchmetrics draws its subsets with the global generator
    mean, std = metrics.kid(a, b, feature=Flat(), subset_size=200)
    assert abs(mean) < 3 * std + 1e-4, (mean, std)  # unbiased: 0 within its spread
    shifted = gaussian_images(MU2, S2, 400, 6)
    mean_s, std_s = metrics.kid(shifted, b, feature=Flat(), subset_size=200)
    assert mean_s > 5 * std_s and mean_s > 20 * abs(mean), (mean_s, std_s, mean)
    # batches (an iterable) give the same features as one tensor
    torch.manual_seed(0)
    assert metrics.kid([a[:150], a[150:]], b, feature=Flat(), subset_size=200) == pytest.approx((mean, std))
    with pytest.raises(ValueError):
        metrics.kid(a, b, feature=Flat(), subset_size=401)


def test_default_inception_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import torch_fidelity -> ImportError
    x = torch.zeros(4, 3, 8, 8)
    for fn in (metrics.kid, metrics.fid):
        with pytest.raises(metrics.MetricUnavailable) as e:
            fn(x, x)
        msg = str(e.value)
        assert "\n" not in msg and "torch-fidelity" in msg and "pip install torch-fidelity" in msg


def _folders(tmp_path):
    g = torch.Generator().manual_seed(7)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for i in range(4):
        x = torch.rand(3, 16, 16, generator=g) * 2 - 1
        data.save_image(x, str(pred / f"{i}.png"))
        data.save_image((x + 0.1 * torch.randn(3, 16, 16, generator=g)).clamp(-1, 1), str(gt / f"{i}.png"))
    return str(pred), str(gt)


def test_evaluate_kid_fid_without_torch_fidelity(tmp_path, monkeypatch, capsys):
    pred, gt = _folders(tmp_path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    assert ev.main(["--pred", pred, "--gt", gt, "--kid", "--fid", "--json", "--no-lpips"]) == 0
    out, err = capsys.readouterr()
    err_lines = [l for l in err.splitlines() if l.strip()]
    assert len(err_lines) == 1 and "torch-fidelity" in err_lines[0] and "pip install" in err_lines[0], err
    res = json.loads(out)
    assert res["n"] == 4 and 10 < res["psnr"] < 60 and 0 < res["ssim"] < 1
    assert "kid" not in res and "fid" not in res and "torch-fidelity" in res["generation_skipped"]
    # the table form says it too, and without --kid/--fid nothing is said
    assert ev.main(["--pred", pred, "--gt", gt, "--kid", "--no-lpips"]) == 0
    out, err = capsys.readouterr()
    assert "psnr" in out and "skipped" in out and err.count("\n") == 1
    assert ev.main(["--pred", pred, "--gt", gt, "--no-lpips"]) == 0
    assert capsys.readouterr().err == ""


def test_generation_metrics_own_features_unmatched_names_and_sizes(tmp_path):
    """KID/FID over folders: names need not match, real images are resized to the sample size."""
    g = torch.Generator().manual_seed(8)
    pred, gt = tmp_path / "samples", tmp_path / "real"
    pred.mkdir(), gt.mkdir()
    for i in range(6):
        data.save_image(torch.rand(3, 8, 8, generator=g) * 2 - 1, str(pred / f"s{i}.png"))
        data.save_image(torch.rand(3, 16, 16, generator=g) * 0.5 - 1, str(gt / f"r{i}.png"))  # darker, 2x size
    seen = []

    class Mean(torch.nn.Module):
        num_features = 3

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x.mean((2, 3))

    res = ev.generation_metrics(str(pred), str(gt), feature=Mean())
    assert set(seen) == {(8, 8)} and res["n_fake"] == res["n_real"] == 6 and res["kid_subset"] == 6
    assert res["kid"] > 0 and res["fid"] > 0.1  # mean colour differs by ~0.75 per channel
    assert ev.evaluate_dirs(str(pred), str(gt), allow_unmatched=True)["n"] == 0


def test_kid_run_on_samples_named_like_real_images_of_another_size(tmp_path, monkeypatch, capsys):
    """sample.py --relay writes 00000.png...; the real faces are 00000.png... at another size: a --kid run says the
    paired metrics are skipped (one line) instead of failing on the first pair; without --kid it is an error."""
    g = torch.Generator().manual_seed(9)
    pred, gt = tmp_path / "gen", tmp_path / "real"
    pred.mkdir(), gt.mkdir()
    for i in range(3):
        data.save_image(torch.rand(3, 8, 8, generator=g) * 2 - 1, str(pred / f"{i:05d}.png"))
        data.save_image(torch.rand(3, 16, 16, generator=g) * 2 - 1, str(gt / f"{i:05d}.png"))
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--kid", "--json", "--no-lpips"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert res["n"] == 0 and "sizes differ" in res["pixel_skipped"] and "torch-fidelity" in res["generation_skipped"]
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--no-lpips"]) == 2
    assert "differs from" in capsys.readouterr().err
