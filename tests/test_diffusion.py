"""SR3 diffusion, the DREAM formulas and the UNet: checked against closed forms and float64 hand computations."""
import math

import numpy as np
import pytest
import torch

import dream
import unet
from diffusion import GaussianDiffusion, beta_schedule


def test_dream_formulas_match_float64_hand_computation():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    a = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64).reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    W = torch.randn(2, 2, generator=g, dtype=torch.float64)
    eps_fn = lambda x: torch.einsum('ij,bjhw->bihw', W, x)  # any deterministic "model"
    for p in (0.0, 1.0, 2.0):
        xt2, eps2 = dream.rectify_eps(eps_fn, x_t, eps, a, p)
        an, xtn, en = a.numpy(), x_t.numpy(), eps.numpy()
        eh = np.einsum('ij,bjhw->bihw', W.numpy(), xtn)
        lam = (1 - an) ** (p / 2)
        np.testing.assert_allclose(xt2.numpy(), xtn + lam * np.sqrt(1 - an) * (en - eh), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(eps2.numpy(), en + lam * (en - eh), rtol=1e-12, atol=1e-12)
    assert dream.dream_lambda(0.75, 1) == pytest.approx(0.5)
    assert dream.dream_lambda(0.75, 0) == 1.0
    assert dream.dream_lambda(0.75, math.inf) == 0.0


def test_dream_with_perfect_model_changes_nothing():
    """If eps_hat == eps the rectification is the identity: DREAM only acts on the model's error."""
    x0, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    a = torch.full((2, 1, 1, 1), 0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    xt2, eps2 = dream.rectify_eps(lambda x: eps, x_t, eps, a, 1.0)
    assert torch.allclose(xt2, x_t) and torch.allclose(eps2, eps)


@pytest.mark.parametrize('kind', ['linear', 'cosine', 'quad', 'warmup10', 'warmup50', 'const', 'jsd'])
def test_beta_schedules_are_valid(kind):
    b = beta_schedule(kind, 100, 1e-4, 2e-2)
    assert b.shape == (100,) and np.all(b > 0) and np.all(b <= 1)
    if kind == 'linear':
        assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(2e-2)
    with pytest.raises(ValueError, match='unknown beta schedule'):
        beta_schedule('nope', 10)


def test_continuous_noise_levels_cover_each_interval():
    d = GaussianDiffusion(None, beta_schedule('linear', 50, 1e-4, 0.05))
    g = d.sample_gamma(20000, 'cpu', torch.Generator().manual_seed(0)).double()
    assert g.min() >= d.gamma[-1] and g.max() <= 1.0
    # gamma ~ U(gamma_t, gamma_{t-1}) with t uniform: the fraction below gamma_k is (T - k) / T
    for k in (10, 25, 40):
        assert (g < d.gamma[k]).double().mean().item() == pytest.approx((50 - k) / 50, abs=0.015)


def test_forward_process_statistics():
    d = GaussianDiffusion(None, beta_schedule('linear', 2000, 1e-6, 1e-2))
    x0 = torch.full((4000, 1, 4, 4), 0.7)
    gamma = torch.full((4000,), 0.6)
    x = d.q_sample(x0, gamma, torch.randn_like(x0))
    assert x.mean().item() == pytest.approx(0.6 * 0.7, abs=0.01)
    assert x.var().item() == pytest.approx(1 - 0.36, rel=0.02)
    assert d.alpha_bar[-1].item() == pytest.approx(math.exp(-(1e-6 + 1e-2) / 2 * 2000), rel=0.05)


def gaussian_eps_fn(s2):
    """Optimal noise predictor for data x0 ~ N(0, s2 I): E[eps | x_t] = sqrt(1-a) x_t / (a s2 + 1 - a)."""
    def eps_fn(x, gamma):
        a = (gamma.double() ** 2).reshape(-1, 1, 1, 1)
        return (torch.sqrt(1 - a) * x.double() / (a * s2 + 1 - a)).float()
    return eps_fn


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_samplers_reach_the_data_variance_with_a_closed_form_denoiser(sampler):
    s2 = 0.25
    d = GaussianDiffusion(None, beta_schedule('linear', 2000, 1e-6, 1e-2))
    cond = torch.zeros(4096, 1, 4, 4)
    gen = torch.Generator().manual_seed(1)
    x = d.sample(cond, 1000, sampler=sampler, shape=(4096, 1, 4, 4), generator=gen, clip=False,
                 eps_fn=gaussian_eps_fn(s2))
    assert x.var().item() == pytest.approx(s2, rel=0.03)  # discretisation error: 12% at 100 steps
    assert abs(x.mean().item()) < 0.02
    # and a wrong denoiser (data variance 1) lands elsewhere: the check has teeth
    x_bad = d.sample(cond, 100, sampler=sampler, shape=(4096, 1, 4, 4), generator=gen, clip=False,
                     eps_fn=gaussian_eps_fn(1.0))
    assert x_bad.var().item() > 2 * s2


@pytest.mark.parametrize('tau', [1.0, 0.5, 0.0])
def test_ddpm_temperature_matches_the_closed_form_variance(tau):
    """With x0 ~ N(0, s2) and the exact denoiser every DDPM step is linear, x <- c_i x + tau sqrt(v_i) z, so the
    output variance follows Var <- c_i^2 Var + tau^2 v_i from Var = 1 (written out here in float64)."""
    s2, steps = 0.25, 50
    d = GaussianDiffusion(None, beta_schedule('linear', 2000, 1e-6, 1e-2))
    ab = d.respaced(steps)
    var = 1.0
    for i in range(steps, 0, -1):
        a_t, a_s = ab[i].item(), ab[i - 1].item()
        k = math.sqrt(a_t) * s2 / (a_t * s2 + 1 - a_t)  # E[x0 | x_t] = k x_t
        beta = 1 - a_t / a_s
        c = (math.sqrt(a_s) * beta * k + math.sqrt(1 - beta) * (1 - a_s)) / (1 - a_t)
        var = c * c * var + (tau ** 2 * beta * (1 - a_s) / (1 - a_t) if i > 1 else 0.0)
    x = d.sample(torch.zeros(8192, 1, 4, 4), steps, shape=(8192, 1, 4, 4), generator=torch.Generator().manual_seed(2),
                 clip=False, eps_fn=gaussian_eps_fn(s2), temperature=tau)
    assert x.var().item() == pytest.approx(var, rel=0.03), (tau, var)
    if tau < 1:
        assert var < 0.9 * s2  # a lower temperature really gives less variance than the data's


def test_temperature_must_be_non_negative():
    d = GaussianDiffusion(None, beta_schedule('linear', 100, 1e-4, 2e-2))
    with pytest.raises(ValueError, match='temperature'):
        d.sample(torch.zeros(1, 1, 4, 4), 2, shape=(1, 1, 4, 4), eps_fn=gaussian_eps_fn(1.0), temperature=-1)


def tiny_model(in_ch=6):
    return unet.build_unet('tiny', in_ch, 3, 16, channels=16, dropout=0.1)


@pytest.mark.parametrize('dream_p', [None, 1.0, 0.0])
def test_losses_are_real_and_reach_all_parameters(dream_p):
    torch.manual_seed(0)
    m = tiny_model()
    d = GaussianDiffusion(m, beta_schedule('linear', 2000, 1e-6, 1e-2))
    hr, sr = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    loss = d.loss(hr, sr, dream_p=dream_p)
    assert loss.item() > 0.05 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert m.training  # the DREAM no-grad pass restored train mode


def test_dream_loss_differs_from_standard_for_imperfect_model():
    m = tiny_model()
    d = GaussianDiffusion(m, beta_schedule('linear', 2000, 1e-6, 1e-2))
    hr, sr = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    l_std = d.loss(hr, sr, None, generator=torch.Generator().manual_seed(3)).item()
    l_dream = d.loss(hr, sr, 1.0, generator=torch.Generator().manual_seed(3)).item()
    assert l_std != pytest.approx(l_dream, rel=1e-4)


def test_sampling_runs_with_a_network_and_any_number_of_steps():
    m = tiny_model()
    d = GaussianDiffusion(m, beta_schedule('linear', 2000, 1e-6, 1e-2))
    cond = torch.zeros(2, 3, 16, 16)
    for steps, sampler in ((1, 'ddpm'), (7, 'ddim'), (50, 'ddpm')):
        x = d.sample(cond, steps, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    a = d.sample(cond, 5, generator=torch.Generator().manual_seed(0))
    b = d.sample(cond, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match='sampling steps'):
        d.sample(cond, 0)


def test_paper_unet_parameter_count():
    """DREAM/SR3 16->128 network: 97.8M parameters with 6 inputs (x_t + bicubic-upsampled LR)."""
    m = unet.build_unet('paper', 6, 3, 128)
    assert sum(p.numel() for p in m.parameters()) == 97_807_491


def test_unet_under_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    m = unet.build_unet('tiny', 6, 3, 16, channels=16).eval()
    x, g = torch.randn(2, 6, 16, 16), torch.rand(2)
    ref = m(x, g)
    m2 = m.to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m2(x.to(memory_format=torch.channels_last), g)
    assert out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item() + 0.05


def test_tiny_s2d_runs_at_half_resolution_and_returns_full_resolution():
    """tiny_s2d: pixel_unshuffle(2) in, the UNet at H/2 .. H/8, pixel_shuffle(2) out; sizes not divisible by 8 are
    refused by name."""
    m = unet.build_unet('tiny_s2d', 6, 3, 64)
    assert m.conv_in.in_channels == 24 and m.conv_out[-1].out_channels == 12 and m.min_size == 8
    x = torch.randn(2, 6, 64, 64, requires_grad=True)
    out = m(x, torch.rand(2))
    assert out.shape == (2, 3, 64, 64)
    out[:, :, 1::2, 1::2].sum().backward()  # every sub-pixel phase of the input reaches the odd output pixels
    assert all(x.grad[:, :, i::2, j::2].abs().sum() > 0 for i in (0, 1) for j in (0, 1))
    with pytest.raises(ValueError, match='divisible by 8'):
        m(torch.randn(1, 6, 60, 60), torch.rand(1))


def test_init_schemes():
    """--init: 'orthogonal' (SR3) makes every conv / linear weight orthogonal (rows or columns orthonormal) with zero
    biases; 'zero' (ADM) starts every residual branch and the output at 0, so the net predicts exactly 0."""
    torch.manual_seed(0)
    m = unet.build_unet('tiny', 6, 3, 16, init='orthogonal')
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            w = mod.weight.flatten(1).double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            assert torch.allclose(gram, torch.eye(len(gram), dtype=gram.dtype), atol=1e-5)
            assert mod.bias is None or not mod.bias.any()
    z = unet.build_unet('tiny', 6, 3, 16, init='zero')
    x, g = torch.randn(2, 6, 16, 16), torch.rand(2)
    assert not z(x, g).any()
    block = next(mod for mod in z.modules()
                 if isinstance(mod, unet.ResBlock) and isinstance(mod.skip, torch.nn.Identity))
    h = torch.randn(2, block.block1[-1].in_channels, 8, 8)
    assert torch.equal(block(h, torch.randn(2, 16)), h)  # the identity at the start
    with pytest.raises(ValueError, match='init must be one of'):
        unet.build_unet('tiny', 6, 3, 16, init='xavier')
