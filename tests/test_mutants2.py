"""Tests for the mutants that survived experiments/mutation.sh in relay.py, tasks.py, metrics.py and diffusion.py
(issue 31), second round: settings passed on with non-default values, clamps that only act on out-of-range
values, and the plumbing of the LPIPS and Inception (KID / FID) paths, tested with small stand-ins for the
downloaded networks (no download, no internet). Each checks a hand computation or a written-out contract."""
import math
import sys
import types
import warnings
from statistics import NormalDist

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import diffusion
import metrics
import relay
import tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def _phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ----------------------------------------------------------------------------- relay.py: blur_loss settings
def test_blur_loss_with_non_default_prob_length_and_blur_sigma_max_by_hand():
    """RDM's BlurLoss with prob_length 0.6 and blur_sigma_max 1.5 (CelebA-HQ-like settings) against its definition:
    u ~ U(0, 1) clamped at the blur time of truncate_sigma, so sigma >= truncate_sigma with equality when clamped;
    sigma = exp(P_mean + P_std Phi^-1(u prob_length)); s = blur_sigma_max sin(pi u / 2)^2. A y made of the
    (0, 1) DCT frequency of 2x2 tiles (alternating columns) is blurred to a01 y, a01 = (1 - m) exp(-(pi/2)^2 s^2/2) + m,
    so x - sigma n = a01 y; the loss is the mean of min(lambda, 1e5) (D(x) - y)^2 with D = 0."""
    B, pl, smax, trunc, m = 8, 0.6, 1.5, 0.2, 1e-3
    y = 0.5 * torch.tensor([1.0, -1.0]).repeat(B, 3, 4, 2)  # (B, 3, 4, 4), columns +0.5, -0.5, ...
    seen = {}

    def D(x, sigma):
        seen.update(x=x, sigma=sigma)
        return torch.zeros_like(x)
    loss = relay.blur_loss(D, y, block=2, blur_sigma_max=smax, prob_length=pl, block_scale=0.0, truncate_sigma=trunc,
                           generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the draws in blur_loss's order: u, then the noise
    u_raw = torch.rand((B,), generator=g, dtype=torch.float64).tolist()
    n = torch.randn(y.shape, generator=g)
    u_min = _phi((math.log(trunc) + 1.2) / 1.2) / pl  # 0.611: about 60% of the draws are clamped
    u = [max(v, u_min) for v in u_raw]
    assert 0 < sum(v < u_min for v in u_raw) < B  # both cases occur
    sigma = [math.exp(-1.2 + 1.2 * NormalDist().inv_cdf(v * pl)) for v in u]
    assert seen['sigma'].dtype == torch.float32 and seen['x'].dtype == torch.float32 and loss.dtype == torch.float32
    assert seen['sigma'].tolist() == pytest.approx(sigma, rel=1e-6)
    assert min(seen['sigma'].tolist()) == pytest.approx(trunc, rel=1e-6)  # the clamp is at truncate_sigma exactly
    a01 = torch.tensor([(1 - m) * math.exp(-(math.pi / 2) ** 2 * (smax * math.sin(math.pi * v / 2) ** 2) ** 2 / 2) + m
                        for v in u]).view(B, 1, 1, 1)
    s = torch.tensor(sigma).view(B, 1, 1, 1)
    torch.testing.assert_close(seen['x'] - s * n, a01 * y, atol=2e-6, rtol=0)
    weight = [min((v * v + 0.25) / (0.25 * v * v), 1e5) for v in sigma]
    assert loss.item() == pytest.approx(sum(weight) / B * 0.25, rel=1e-5)  # y^2 = 0.25 everywhere


# ----------------------------------------------------------------------------- tasks.py
def test_loss_config_is_the_sr3_dream_rdm_defaults_with_the_flags_over_them():
    """SR3: linear betas 1e-6 .. 1e-2 over 2000 steps, L1; DREAM p = 1 (off unless asked); RDM stage 2: blur 3.0,
    prob_length 0.93, block noise 0.15; the SR options beyond SR3 off (DESIGN, README)."""
    defaults = dict(schedule='linear', timesteps=2000, beta_start=1e-6, beta_end=1e-2, loss='l1', dream=False,
                    dream_p=1.0, blur_sigma_max=3.0, prob_length=0.93, block_noise=0.15, pred='eps', residual=False,
                    noise_cond='gamma', project=False, project_smooth=0.0)
    assert tasks.loss_config('sr16_128') == dict(defaults, task='sr16_128')
    assert tasks.loss_config('relay8_32', dream=True, loss='l2', prob_length=0.89) == \
        dict(defaults, task='relay8_32', dream=True, loss='l2', prob_length=0.89)


def test_make_diffusion_passes_a_non_default_beta_end():
    """beta_end 0.05 (not beta_schedule's default 1e-2): linear betas 1e-4, 1e-4 + 0.0499 / 3, ..., 0.05, and the
    quad ones (sqrt-spaced, squared); alpha_bar = the running product of 1 - beta, in float64."""
    for kind, betas in (('linear', [1e-4 + (0.05 - 1e-4) * i / 3 for i in range(4)]),
                        ('quad', [(0.01 + (math.sqrt(0.05) - 0.01) * i / 3) ** 2 for i in range(4)])):
        diff = tasks.make_diffusion(None, dict(schedule=kind, timesteps=4, beta_start=1e-4, beta_end=0.05))
        assert diff.alpha_bar.tolist() == pytest.approx([1.0] + list(np.cumprod([1 - b for b in betas])), rel=1e-12)


def test_relay_bicubic_baseline_is_clamped_to_the_image_range():
    """Bicubic upsampling of a -1 | +1 edge overshoots (Keys' kernel has negative lobes) to about +-1.1: the baseline
    is an image, so it is clamped to [-1, 1] (and equal to the unclamped bicubic elsewhere)."""
    hr = torch.ones(1, 3, 8, 8)
    hr[..., :4] = -1.0
    _, bicubic = tasks.relay_inputs(hr, 2)
    raw = F.interpolate(hr[..., ::2, ::2], size=(8, 8), mode='bicubic', align_corners=False)  # tiles are constant
    assert raw.min() < -1.05 and raw.max() > 1.05  # the edge does overshoot
    assert bicubic.min().item() == -1.0 and bicubic.max().item() == 1.0
    torch.testing.assert_close(bicubic, raw.clamp(-1, 1))


# ----------------------------------------------------------------------------- diffusion.py
def test_gaussian_diffusion_keeps_float64_for_float32_betas():
    """Betas given in float32 (e.g. a torch.linspace) are read in float64: alpha_bar over 2000 steps equals the float64
    running product of the same float32 values (a float32 product drifts by ~1e-5)."""
    b32 = np.linspace(1e-4, 2e-2, 2000, dtype=np.float32)
    diff = diffusion.GaussianDiffusion(None, b32)
    expected = [1.0]
    for b in b32.tolist():
        expected.append(expected[-1] * (1 - b))
    assert diff.alpha_bar.dtype == torch.float64
    assert diff.alpha_bar.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)


# ----------------------------------------------------------------------------- metrics.py: Frechet distance, KID
def test_frechet_distance_is_computed_in_float64_for_float32_inputs():
    """Equal covariances with variances 1e4, 1, 1e-2 (rotated) and means 0.1 apart: FD = 0.01. In float32 the trace
    terms (2e4) cancel with a round-off of ~0.1, so the inputs must be read in float64 whatever their dtype."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    s = (q @ torch.diag(torch.tensor([1e4, 1.0, 1e-2], dtype=torch.float64)) @ q.T).float()
    mu = torch.tensor([100.0, 0.0, 0.0])
    assert metrics.frechet_distance(mu, s, mu + torch.tensor([0.0, 0.0, 0.1]), s) == pytest.approx(0.01, abs=1e-4)


from test_mutants import _Flat, _points  # noqa: E402  (the 4-pixel feature network and its inputs)


def test_kid_default_subset_size_is_capped_at_1000_and_subsets_are_passed_on():
    """1001 images a side: the default subset size is min(n, 1000) = 1000; with subsets = 1 there is a single
    MMD^2 estimate, so its std over subsets is 0 exactly (torchmetrics' own default would be 100 subsets)."""
    out = metrics.kid_fid(_points(1001, 0), _points(1001, 1), 1001, 1001, use_fid=False, feature=_Flat(), subsets=1)
    assert out['kid_subset'] == 1000 and out['kid_std'] == 0.0
    assert metrics.kid(_points(40, 0), _points(40, 1), feature=_Flat(), subsets=1)[1] == 0.0


def test_kid_silences_only_torchmetrics_user_warning():
    """The feature-buffer UserWarning is silenced; a warning of another kind (here the feature network's own
    RuntimeWarning) still reaches the caller."""
    class Warns(_Flat):
        def forward(self, x):
            warnings.warn("overflow in the feature network", RuntimeWarning)
            return x.flatten(1)
    with pytest.warns(RuntimeWarning, match="overflow in the feature network"):
        metrics.kid(_points(4, 0), _points(4, 1), feature=Warns())


def test_fid_with_an_own_feature_network_without_num_features_gets_floats_only():
    """torchmetrics probes a network with no `num_features` with one dummy image, uint8 unless normalize=True; an own
    network takes [-1,1] floats (metrics docstring), so it must never be handed uint8 (a conv layer would fail)."""
    dtypes = []

    class MeanColour(torch.nn.Module):
        def forward(self, x):
            dtypes.append(x.dtype)
            return x.mean((2, 3))
    fake, real = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    assert math.isfinite(metrics.fid(fake, real, feature=MeanColour()))
    assert dtypes and set(dtypes) == {torch.float32}


# ----------------------------------------------------------------------------- metrics.py: the default Inception path
class _Inception(torch.nn.Module):
    """Stand-in for torch-fidelity's Inception: records each batch it is fed; features = the mean colour."""
    num_features = 3

    def __init__(self, fed):
        super().__init__()
        self.fed = fed

    def forward(self, x):
        self.fed.append(x.clone())
        return x.double().mean((2, 3))


def _stand_in_inception(monkeypatch, fail=None):
    """torch_fidelity importable (an empty module) and torchmetrics' KID / FID classes replaced by subclasses that
    record how they were built and put _Inception where the 2048-d Inception would be loaded (or raise `fail`)."""
    from torchmetrics.image import fid as tm_fid, kid as tm_kid
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    built, fed = [], []

    def recording(base, name):
        class Recording(base):
            def __init__(self, feature, **kw):
                built.append((name, feature, kw))
                if fail is not None:
                    raise fail
                super().__init__(feature=_Inception(fed), **kw)
        return Recording
    monkeypatch.setattr(tm_kid, "KernelInceptionDistance", recording(tm_kid.KernelInceptionDistance, "kid"))
    monkeypatch.setattr(tm_fid, "FrechetInceptionDistance", recording(tm_fid.FrechetInceptionDistance, "fid"))
    return built, fed


def test_default_inception_gets_2048_d_features_uint8_images_and_the_kid_settings(monkeypatch):
    """feature=None: torchmetrics builds the 2048-d pool features (feature=2048) with the KID settings (100 subsets
    by default, the subset size); each batch is fed once as given (a tensor is one batch), as uint8 values of
    SR3's quantization round((clamp(x) + 1) / 2 * 255)."""
    built, fed = _stand_in_inception(monkeypatch)
    fake = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.3, 1.0, 2.0]).repeat(5, 1, 1, 1)  # (5, 1, 1, 7)
    real = [fake[:2] * 0.5, fake[2:] * 0.5]  # an iterable: two batches
    out = metrics.kid_fid(fake, real, 5, 5)
    assert sorted(built, key=lambda b: b[0]) == [("fid", 2048, {}), ("kid", 2048, dict(subsets=100, subset_size=5))]
    assert [b.shape[0] for b in fed] == [5, 5, 2, 2, 3, 3]  # each batch to both metrics, no batch split
    assert all(b.dtype == torch.uint8 for b in fed)
    assert fed[0][0, 0, 0].tolist() == [0, 0, 102, 128, 166, 255, 255]  # 255 (x + 1) / 2, rounded half to even
    assert fed[2][0, 0, 0].tolist() == [32, 64, 115, 128, 147, 191, 255]  # x / 2 in: 31.875 -> 32, 146.625 -> 147
    assert set(out) == {"kid", "kid_std", "kid_subset", "fid"} and out["kid_subset"] == 5
    built.clear()
    metrics.kid(fake, fake)
    assert built == [("kid", 2048, dict(subsets=100, subset_size=5))]


def test_inception_weights_unavailable_is_one_line_with_the_cause_and_the_cache(monkeypatch):
    """Offline with no cached weights: one line naming the exception, its message with the whitespace folded, and
    the torch hub folder where the weights would be cached."""
    offline = OSError("<urlopen error [Errno -3]\n   Temporary failure in name resolution>")
    _stand_in_inception(monkeypatch, fail=offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nowhere/hub")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(metrics.MetricUnavailable) as e:
        metrics.fid(x, x)
    assert str(e.value) == ("KID/FID: torch-fidelity's Inception weights could not be loaded or downloaded (OSError: "
                            "<urlopen error [Errno -3] Temporary failure in name resolution>); go online once to "
                            "cache them in /nowhere/hub")


def test_torch_fidelity_import_failure_names_the_cause_on_one_line(monkeypatch):
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "torch_fidelity":
                raise ImportError("torchvision::nms  does not exist\n(a torchvision built for another torch)")
            return None
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Refuse()] + sys.meta_path)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(metrics.MetricUnavailable) as e:
        metrics.kid(x, x)
    assert str(e.value) == ("KID/FID need the Inception network of torch-fidelity, which does not import (ImportError: "
                            "torchvision::nms does not exist (a torchvision built for another torch)); install it: "
                            + metrics.INSTALL_HINT)


# ----------------------------------------------------------------------------- metrics.py: LPIPS plumbing
URLS = {"alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth"}


def _stand_in_lpips(monkeypatch, tmp_path, on_disk=(), broken=None):
    """An `lpips` package (in tmp_path) whose LPIPS prints when verbose, as the real one does, and scores the mean
    absolute difference; a `torchvision` with the two weight URLs; torch hub's folder in tmp_path. on_disk: the nets
    whose two weight files exist. broken: an exception LPIPS() raises."""
    made, seen = [], []

    class LPIPS(torch.nn.Module):
        def __init__(self, net="alex", verbose=True):
            super().__init__()
            if broken is not None:
                raise broken
            made.append(net)
            if verbose:
                print(f"Setting up [LPIPS] perceptual loss: trunk [{net}]")

        def forward(self, a, b):
            seen.append((a.clone(), b.clone()))
            return (a - b).abs().mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1) as the real one

    lp = types.ModuleType("lpips")
    lp.__file__ = str(tmp_path / "lpips" / "__init__.py")
    lp.LPIPS = LPIPS
    weights = types.SimpleNamespace
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(AlexNet_Weights=weights(IMAGENET1K_V1=weights(url=URLS["alex"])),
                                      VGG16_Weights=weights(IMAGENET1K_V1=weights(url=URLS["vgg"])))
    monkeypatch.setitem(sys.modules, "lpips", lp)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    for net in on_disk:
        for f in (tmp_path / "lpips" / "weights" / "v0.1" / f"{net}.pth",
                  tmp_path / "hub" / "checkpoints" / URLS[net].rsplit("/", 1)[1]):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"")
    return made, seen


def test_lpips_fn_builds_either_net_quietly_and_feeds_it_images_clamped_to_the_range(monkeypatch, tmp_path, capsys):
    """With the weights on disk, alex and vgg both load (quietly: evaluate --json prints JSON on stdout) and the
    network gets pred and gt clamped to [-1, 1] (LPIPS' own input convention); the score comes back as (B,)."""
    made, seen = _stand_in_lpips(monkeypatch, tmp_path, on_disk=("alex", "vgg"))
    pred = torch.tensor([-1.5, -0.5, 0.5, 1.5]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    gt = torch.tensor([1.2, 0.0, -3.0, 1.0]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    for net in ("alex", "vgg"):
        fn, reason = metrics.lpips_fn(net)
        assert fn is not None and reason == "", reason
        score = fn(pred, gt)
        assert score.shape == (2,) and score.tolist() == pytest.approx([1.0, 1.0])  # |(-1, -.5, .5, 1) - (1, 0, -1, 1)|
        a, b = seen[-1]
        assert a[0, 0].flatten().tolist() == [-1.0, -0.5, 0.5, 1.0]
        assert b[0, 0].flatten().tolist() == [1.0, 0.0, -1.0, 1.0]
    assert made == ["alex", "vgg"] and capsys.readouterr().out == ""


def test_lpips_fn_without_weights_names_each_missing_file_and_builds_nothing(monkeypatch, tmp_path):
    made, _ = _stand_in_lpips(monkeypatch, tmp_path)
    fn, reason = metrics.lpips_fn("alex")
    lpips_file = tmp_path / "lpips" / "weights" / "v0.1" / "alex.pth"
    hub_file = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert fn is None and made == []
    assert reason == f"LPIPS weights not on disk ({lpips_file}, {hub_file}); not downloading"


def test_lpips_fn_that_fails_to_load_says_why_on_one_line(monkeypatch, tmp_path):
    _stand_in_lpips(monkeypatch, tmp_path, on_disk=("alex",), broken=RuntimeError("corrupt alex.pth\nat byte 12"))
    assert metrics.lpips_fn("alex") == (None, "LPIPS unavailable: RuntimeError: corrupt alex.pth")
