"""metrics.pixel_frechet: the Frechet distance of Gaussians fit to two image sets on their pixels (or the top-k
principal components of the real set), against references worked out by hand."""
import math

import pytest
import torch

import metrics

F64 = torch.float64
D = 12  # images (3, 2, 2): 12 values each


def rotation(seed):
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def gaussian(mu, sd, q, n, seed):
    """n images of N(mu, q diag(sd^2) q^T), as (n, 3, 2, 2)."""
    eps = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (mu + (eps * sd) @ q.T).view(n, 3, 2, 2)


def test_two_gaussians_match_the_closed_form_within_the_sampling_error():
    """Covariances q diag(a) q^T and q diag(b) q^T commute, so FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    Sampling error (n per set): to first order the mean term moves by 2 |delta| * sqrt(2 max(a, b) / n) and each sd
    estimate by sd / sqrt(2n), so the sd term by 2 |sd1 - sd2| sd / sqrt(n); second order adds about d^2 max var / n
    (the off-diagonal covariance estimates). The tolerance is 6 of the first plus the second."""
    n = 200_000
    q = rotation(0)
    mu1 = torch.linspace(-0.5, 0.5, D, dtype=F64)
    mu2 = mu1 + torch.linspace(0.0, 0.3, D, dtype=F64)
    sd1 = torch.linspace(0.2, 0.6, D, dtype=F64)
    sd2 = torch.linspace(0.5, 0.3, D, dtype=F64)
    exact = float((mu1 - mu2).pow(2).sum() + (sd1 - sd2).pow(2).sum())
    delta, big = (mu1 - mu2).abs(), torch.maximum(sd1, sd2)
    first = float((2 * delta * big * math.sqrt(2 / n)).pow(2).sum().sqrt()
                  + (2 * (sd1 - sd2).abs() * big / math.sqrt(n)).pow(2).sum().sqrt())
    tol = 6 * first + D * D * float(big.max() ** 2) / n
    got = metrics.pixel_frechet(gaussian(mu1 @ q.T, sd1, q, n, 1), gaussian(mu2 @ q.T, sd2, q, n, 2))
    # by hand: 0.09 * 506 / 121 (means) + 0.09 * 572 / 121 (sds) = 0.8018
    assert exact == pytest.approx(0.09 * (506 + 572) / 121, rel=1e-12)
    assert abs(got - exact) < tol < 0.025, (got, exact, tol)  # ~3% of the value: a wrong term moves it more


def test_identical_sets_are_at_distance_zero_with_and_without_pcs():
    x = gaussian(torch.zeros(D, dtype=F64), torch.linspace(0.1, 1.0, D, dtype=F64), rotation(3), 50, 4)
    assert metrics.pixel_frechet(x, x) == pytest.approx(0.0, abs=1e-10)
    assert metrics.pixel_frechet(x.float(), x.float(), pcs=5) == pytest.approx(0.0, abs=1e-10)


def test_a_shift_by_c_in_every_pixel_costs_d_c_squared():
    """Covariances unchanged by a shift, so only |mu1 - mu2|^2 = d c^2 remains (d = 12 values, c = 0.25)."""
    x = gaussian(torch.zeros(D, dtype=F64), torch.linspace(0.1, 1.0, D, dtype=F64), rotation(5), 40, 6)
    assert metrics.pixel_frechet(x + 0.25, x) == pytest.approx(D * 0.25 ** 2, rel=1e-9)


def test_pcs_of_data_in_a_k_dim_subspace_keep_the_full_distance_and_come_from_the_real_set():
    """Both sets in the affine subspace m + span(B), k = 3: the top 3 principal components of the real set span it,
    so the distance on them equals the full one. A fake set that also varies (strongly) off that subspace gets, with
    pcs=3, the distance of its in-subspace part: the axes are the real set's, not the fake set's or both's."""
    k = 3
    basis = rotation(7)[:, :k]  # orthonormal columns
    m = torch.linspace(-0.2, 0.4, D, dtype=F64)
    g = torch.Generator().manual_seed(8)
    real = (m + (torch.randn(60, k, generator=g, dtype=F64) * torch.tensor([1.0, 0.5, 0.2], dtype=F64)) @ basis.T)
    inside = m + (0.3 + torch.randn(70, k, generator=g, dtype=F64) * torch.tensor([0.4, 0.8, 0.1], dtype=F64)) @ basis.T
    full = metrics.pixel_frechet(inside.view(-1, 3, 2, 2), real.view(-1, 3, 2, 2))
    assert full > 0.1
    assert metrics.pixel_frechet(inside.view(-1, 3, 2, 2), real.view(-1, 3, 2, 2), pcs=k) == pytest.approx(full, rel=1e-6)
    off = rotation(7)[:, k]  # a unit direction orthogonal to span(B)
    outside = inside + 3.0 * torch.randn(70, 1, generator=g, dtype=F64) * off
    assert metrics.pixel_frechet(outside.view(-1, 3, 2, 2), real.view(-1, 3, 2, 2), pcs=k) == pytest.approx(full, rel=1e-6)
    assert metrics.pixel_frechet(outside.view(-1, 3, 2, 2), real.view(-1, 3, 2, 2)) > full + 5  # the full one sees it


def test_bad_input_is_a_one_line_error():
    x = torch.zeros(20, 3, 2, 2)
    with pytest.raises(ValueError, match=r'fake \(20, 3, 2, 2\) and real \(20, 3, 4, 4\) must be batches of images of one size'):
        metrics.pixel_frechet(x, torch.zeros(20, 3, 4, 4))
    with pytest.raises(ValueError, match='12 fake images are too few for a 12-dim covariance'):
        metrics.pixel_frechet(torch.rand(12, 3, 2, 2), torch.rand(20, 3, 2, 2))
    with pytest.raises(ValueError, match='5 real images are too few for a 5-dim covariance'):
        metrics.pixel_frechet(torch.rand(20, 3, 2, 2), torch.rand(5, 3, 2, 2), pcs=5)
    with pytest.raises(ValueError, match='pcs=13 must be between 1 and the 12 values'):
        metrics.pixel_frechet(x, x, pcs=13)
    with pytest.raises(ValueError, match='the fake images hold NaN'):
        metrics.pixel_frechet(torch.full((20, 3, 2, 2), float('nan')), torch.rand(20, 3, 2, 2))


def test_a_constant_set_has_zero_covariance_and_costs_its_mean_gap_plus_the_real_trace():
    """n copies of one image (the 'mean face' reference): covariance 0 up to round-off (~1e-32), FD = |m - mu|^2 +
    tr(Sigma_real), computed by hand in float64. On this input (32 values, seed 1) LAPACK's general eigensolver on
    sigma1 @ sigma2 fails to converge here (it did for about 1 seed in 4); the symmetric form does not."""
    g = torch.Generator().manual_seed(1)
    real = torch.randn(60, 32, generator=g, dtype=F64) * torch.linspace(0.1, 1.0, 32, dtype=F64)
    const = real.mean(0, keepdim=True).expand(40, -1) + 0.1
    exact = 32 * 0.1 ** 2 + float(((real - real.mean(0)) ** 2).sum() / (len(real) - 1))
    assert metrics.pixel_frechet(const.reshape(40, 2, 4, 4), real.view(60, 2, 4, 4)) == pytest.approx(exact, rel=1e-9)
