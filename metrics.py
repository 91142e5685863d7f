"""Image metrics as SR3 / DREAM compute them, as functions on [-1, 1] image tensors (B, 3, H, W).

Recipes (so our numbers compare with theirs):
* images are quantized as SR3's tensor2img: clamp [-1,1] -> [0,1] -> x255 -> round (float32 math), uint8 values;
* PSNR = 10 log10(255^2 / MSE), MSE over all RGB values of one image, no crop, no Y. Identical images: +inf
  (SR3's calculate_psnr; a mean with one is inf);
* SSIM (Wang 2004) on the 0-255 values in float64: 11x11 Gaussian window sigma 1.5, C1 = (0.01*255)^2,
  C2 = (0.03*255)^2, 'valid' region only (5 px dropped per side), mean over pixels and RGB channels;
* psnr_y / ssim_y (y_channel=True): BasicSR's rgb2ycbcr luma, ITU-R BT.601 studio swing (16-235), unrounded:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0-255 values;
* consistency = MSE on the [0,1] scale of data.resize(pred, lr size, bicubic) vs lr (raw; DREAM prints x1e5);
* flat_noise (ours, the "residual noise" of the SR issue) = sqrt of the high-pass energy of pred over gt's, in gt's
  flattest 30% of pixels: high-pass = z - Gaussian blur (sigma 1 px), flatness = gt's local (5x5) high-pass energy.
  1 = as much pixel-scale fluctuation where the real image is smooth as the real image has there; > 1 noise or
  hallucinated texture left in pred (the speckle of an undertrained diffusion model); < 1 smoother (bicubic ~0.7);
* grid_texture (ours, the "4x4 texture" of the SR issue) = mean squared neighbour difference across the borders of
  the s x s cells that the LR pixels cover, over the same within cells (s = hr / lr). 1 = no texture tied to the LR
  grid (real faces 0.99); nearest upsampling is infinite; bicubic 4x upsampling 1.53 (its slope peaks mid-way
  between LR samples); an SR output above HR's value shows the LR grid;
* LPIPS (AlexNet, `lpips` package, only when its weights are already on disk) on [-1,1] inputs, the
  package's convention; the DREAM code feeds [0,1], so its LPIPS numbers are not comparable.
* KID / FID (RDM's generation metrics): torchmetrics' KernelInceptionDistance / FrechetInceptionDistance. With the
  default feature (None) that is torch-fidelity's Inception-v3 (2048-d pool features), fed the uint8 images (it
  resizes to 299 itself); its weights download once and are cached. With `feature=` an nn.Module of one's own,
  the module gets the [-1,1] float images as they are. KID is unbiased at small n (quote it with its std); FID is
  biased upwards at small n (the paper's FID uses 50k samples), so FID on a few hundred images is not comparable.
* pixel_frechet (ours) = the same Frechet distance on the pixels (or their top-k principal components) of small
  images, no network: relay stage 1's 16x16 faces (docs/relay.md). Not perceptual; a moment-matched Gaussian scores ~0.
"""
import os

import torch
import torch.nn.functional as F

import data

RECIPE = ("PSNR/SSIM on RGB uint8 0-255, SSIM 11x11 gaussian sigma 1.5 valid, no crop; "
          "consistency = MSE[0,1] of bicubic-down(pred) vs lr")
_LPIPS = {}  # net -> (fn, reason), built once


def _batch(x):
    x = torch.as_tensor(x)
    return x.unsqueeze(0) if x.dim() == 3 else x


def quantize(x):
    """[-1,1] floats -> the uint8 values (0..255) as float64, as SR3's tensor2img (float32 math, half to even)."""
    return ((torch.as_tensor(x).float().clamp(-1, 1) + 1) / 2 * 255.0).round().double()


def rgb_to_y(q):
    """(B,3,H,W) 0-255 RGB -> (B,1,H,W) BT.601 studio-swing luma (16-235), BasicSR's rgb2ycbcr(y_only=True)."""
    return (q * q.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)).sum(1, keepdim=True) / 255.0 + 16.0


def _prep(pred, gt, y_channel):
    pred, gt = _batch(pred), _batch(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    return (rgb_to_y(quantize(pred)), rgb_to_y(quantize(gt))) if y_channel else (quantize(pred), quantize(gt))


def psnr(pred, gt, y_channel=False):
    """Per-image PSNR (B,) in dB of [-1,1] images after uint8 quantization; +inf for identical images."""
    p, g = _prep(pred, gt, y_channel)
    return 10 * torch.log10(255.0 ** 2 / (p - g).pow(2).flatten(1).mean(1))  # mse == 0 -> +inf


def _gaussian_valid(n, device=None, size=11, sigma=1.5):
    """(n-10, n) banded matrix M: M @ v = 'valid' 1-D Gaussian filtering of v (no padding, 5 px lost per side).
    Taps = cv2.getGaussianKernel(11, 1.5) = scipy's gaussian_filter(sigma=1.5, truncate=3.5) used by skimage."""
    k = torch.exp(-(torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    rows = torch.arange(n - size + 1, device=device).unsqueeze(1)
    m = torch.zeros(n - size + 1, n, dtype=torch.float64, device=device)
    m[rows, rows + torch.arange(size, device=device)] = k / k.sum()
    return m


def ssim(pred, gt, y_channel=False):
    """Per-image SSIM (B,), SR3's calculate_ssim: float64, 11x11 gaussian, valid region, mean over pixels+channels."""
    p, g = _prep(pred, gt, y_channel)
    H, W = p.shape[-2:]
    if H < 11 or W < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {H}x{W}")
    x = torch.stack([p, g, p * p, g * g, p * g])  # (5, B, C, H, W)
    mu1, mu2, e11, e22, e12 = _gaussian_valid(H, x.device) @ x @ _gaussian_valid(W, x.device).T  # separable 2-D filter
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s1, s2, s12 = e11 - mu1 ** 2, e22 - mu2 ** 2, e12 - mu1 * mu2
    smap = (2 * mu1 * mu2 + C1) * (2 * s12 + C2) / ((mu1 ** 2 + mu2 ** 2 + C1) * (s1 + s2 + C2))
    return smap.flatten(1).mean(1)


def consistency(pred, lr):
    """Per-image (B,) MSE in [0,1] between bicubic-down(pred) (data.resize, uint8 PIL) and lr (quantized)."""
    lr = _batch(lr)
    down = data.resize(_batch(pred), tuple(lr.shape[-2:]))
    return ((quantize(down) - quantize(lr)) / 255.0).pow(2).flatten(1).mean(1)


def _high_pass(z, sigma=1.0, radius=3):
    """z - Gaussian blur of z (separable, reflect padding), float64."""
    radius = min(radius, z.shape[-2] - 1, z.shape[-1] - 1)  # reflect padding needs pad < size
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=z.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    z = z.double()
    c = z.shape[1]
    b = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode='reflect'), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    b = F.conv2d(F.pad(b, (0, 0, radius, radius), mode='reflect'), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return z - b


def flat_noise(pred, gt, quantile=0.3):
    """Per-image (B,) residual noise: sqrt(sum over gt's flattest pixels of |hp(pred)|^2 / the same of |hp(gt)|^2),
    hp = high-pass (z - Gaussian blur, sigma 1 px); the flattest pixels are the `quantile` of each image with the
    lowest 5x5 mean of gt's high-pass energy (module docstring)."""
    pred, gt = _batch(pred), _batch(gt)
    e_gt = _high_pass(gt).pow(2).mean(1, keepdim=True)
    local = F.avg_pool2d(e_gt, 5, 1, 2, count_include_pad=False)
    thr = local.flatten(1).quantile(quantile, dim=1).view(-1, 1, 1, 1)
    mask = (local <= thr).double()
    e_pred = _high_pass(pred).pow(2).mean(1, keepdim=True)
    num = (e_pred * mask).flatten(1).sum(1)
    den = (e_gt * mask).flatten(1).sum(1).clamp(min=1e-12)
    return (num / den).sqrt().float()


def grid_texture(pred, scale):
    """Per-image (B,): mean squared difference of horizontal and vertical neighbours straddling a border of the
    scale x scale cells (pixels scale*k - 1 | scale*k) over that of neighbours inside a cell (module docstring)."""
    pred = _batch(pred).double()
    on, off = [], []
    for dim in (-1, -2):
        d = pred.diff(dim=dim).pow(2)
        border = torch.arange(d.shape[dim], device=d.device) % scale == scale - 1
        on.append(d.index_select(dim, border.nonzero().flatten()).flatten(1).mean(1))
        off.append(d.index_select(dim, (~border).nonzero().flatten()).flatten(1).mean(1))
    on, off = on[0] + on[1], off[0] + off[1]
    ratio = torch.where(off > 0, on / off.clamp(min=1e-300), torch.where(on > 0, torch.inf, 1.0))
    return ratio.float()  # flat inside every cell (nearest upsampling): inf; a constant image: 1


def lpips_fn(net="alex"):
    """(fn, reason): fn(pred, gt) -> (B,) LPIPS of [-1,1] images, or (None, why) if unavailable. Never downloads."""
    if net in _LPIPS:
        return _LPIPS[net]
    try:
        import lpips as lp
        import torchvision
        url = getattr(torchvision.models, {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}[net]).IMAGENET1K_V1.url
        missing = [f for f in (os.path.join(os.path.dirname(lp.__file__), "weights", "v0.1", f"{net}.pth"),
                               os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))) if not os.path.isfile(f)]
        model = None if missing else lp.LPIPS(net=net, verbose=False).eval()

        def fn(pred, gt):  # [-1,1] in (LPIPS' own convention), on pred's device
            pred, gt = _batch(pred).float().clamp(-1, 1), _batch(gt).float().clamp(-1, 1)
            with torch.no_grad():
                return model.to(pred.device)(pred, gt.to(pred.device)).flatten().cpu()
        result = (None, f"LPIPS weights not on disk ({', '.join(missing)}); not downloading") if missing else (fn, "")
    except Exception as e:  # not installed, no torchvision, corrupt weights...
        result = (None, f"LPIPS unavailable: {type(e).__name__}: {e}".splitlines()[0])
    return _LPIPS.setdefault(net, result)


# ----------------------------------------------------------------------------- KID / FID (generation)
class MetricUnavailable(RuntimeError):
    """KID / FID cannot be computed here (no torch-fidelity, or its Inception weights cannot be fetched).
    The message is one line saying what is missing and how to get it."""


INSTALL_HINT = "pip install torch-fidelity (it needs a torchvision that imports beside your torch)"


def _batches(x):
    """A (B,3,H,W) tensor or an iterable of such batches (or of (3,H,W) images) -> list-like of 4-D batches."""
    if torch.is_tensor(x):
        return [_batch(x)]
    return (_batch(b) for b in x)


def _metric(cls, feature, **kw):
    """Build a torchmetrics KID/FID object; MetricUnavailable (one line) when the default Inception is missing."""
    if feature is not None:
        return cls(feature=feature, normalize=True, **kw)
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' default Inception-v3 lives there)
    except Exception as e:  # ImportError, or torchvision failing to import beside this torch
        raise MetricUnavailable(f"KID/FID need the Inception network of torch-fidelity, which does not import "
                                f"({type(e).__name__}: {' '.join(str(e).split())}); install it: {INSTALL_HINT}") from None
    try:
        return cls(feature=2048, **kw)  # downloads the Inception weights once (torch hub cache)
    except Exception as e:  # offline: URLError / OSError / HTTPError while fetching the weights
        raise MetricUnavailable(f"KID/FID: torch-fidelity's Inception weights could not be loaded or downloaded "
                                f"({type(e).__name__}: {' '.join(str(e).split())}); go online once to cache them "
                                f"in {torch.hub.get_dir()}") from None


def _feed(ms, fake, real, feature):
    """Update torchmetrics KID/FID objects `ms` with the batches of fake and real images, each batch once (an
    iterable is consumed as it goes: a folder is never held in memory); returns (n_fake, n_real)."""
    n = {True: 0, False: 0}
    with torch.no_grad():
        for imgs, is_real in ((fake, False), (real, True)):
            for b in _batches(imgs):
                b = b.float() if feature is not None else quantize(b).to(torch.uint8)
                for m in ms:
                    m.update(b, real=is_real)
                n[is_real] += b.shape[0]
    return n[False], n[True]


def _count(x):
    return sum(_batch(b).shape[0] for b in _batches(x))


def kid_fid(fake, real, n_fake, n_real, use_kid=True, use_fid=True, feature=None, subset_size=None, subsets=100):
    """KID (kid, kid_std, kid_subset) and / or FID (fid) from one pass over fake and real [-1,1] images (tensors or
    iterables of batches, read once; n_fake / n_real their counts, known beforehand because KID's subset size is
    fixed before the first batch). kid: cubic polynomial kernel MMD^2, unbiased, over `subsets` random subsets of
    `subset_size` images (default min(n_fake, n_real, 1000)). fid: biased upwards at small n, not the paper's FID.
    feature: None = torch-fidelity's Inception (MetricUnavailable if missing), or an nn.Module mapping
    (B,3,H,W) [-1,1] floats to (B, num_features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    import warnings
    n = min(n_fake, n_real)
    if n < 2:
        raise ValueError(f"KID/FID need at least 2 fake and 2 real images, got {n_fake} fake, {n_real} real")
    subset_size = min(n, 1000) if subset_size is None else int(subset_size)
    if use_kid and not 2 <= subset_size <= n:
        raise ValueError(f"KID subset size {subset_size} must be in [2, {n}] (the number of images)")
    out, ms = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        if use_kid:
            ms["kid"] = _metric(KernelInceptionDistance, feature, subsets=subsets, subset_size=subset_size)
        if use_fid:
            ms["fid"] = _metric(FrechetInceptionDistance, feature)
        fed = _feed(list(ms.values()), fake, real, feature)
        if fed != (n_fake, n_real):
            raise ValueError(f"KID/FID were told {n_fake} fake and {n_real} real images but got {fed[0]} and {fed[1]}")
        if use_kid:
            mean, std = ms["kid"].compute()
            out.update(kid=float(mean), kid_std=float(std), kid_subset=subset_size)
        if use_fid:
            out["fid"] = float(ms["fid"].compute())
    return out


def kid(fake, real, feature=None, subset_size=None, subsets=100):
    """(mean, std) of the Kernel Inception Distance between fake and real [-1,1] images (tensors (B,3,H,W) or
    iterables of batches, which are listed to count them; kid_fid streams them), as kid_fid."""
    fake, real = list(_batches(fake)), list(_batches(real))
    res = kid_fid(fake, real, _count(fake), _count(real), use_fid=False, feature=feature, subset_size=subset_size,
                  subsets=subsets)
    return res["kid"], res["kid_std"]


def fid(fake, real, feature=None):
    """Frechet Inception Distance between fake and real [-1,1] images (tensors or iterables of batches), as kid_fid."""
    fake, real = list(_batches(fake)), list(_batches(real))
    return kid_fid(fake, real, _count(fake), _count(real), use_kid=False, feature=feature)["fid"]


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Closed-form Frechet (2-Wasserstein^2) distance of N(mu1, sigma1) and N(mu2, sigma2), in float64:
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)). tr of the square root is the sum
    of the square roots of the eigenvalues of sigma1 @ sigma2, which are those of the symmetric PSD
    sigma1^(1/2) sigma2 sigma1^(1/2): computed so (eigh), which also holds for singular or zero covariances, where
    a general eigensolver on sigma1 @ sigma2 can fail to converge (round-off below 0 clamped)."""
    mu1, mu2, s1, s2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    ev = torch.linalg.eigvalsh(root1 @ ((s2 + s2.T) / 2) @ root1).clamp_min(0)
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * ev.sqrt().sum())


def pixel_frechet(fake, real, pcs=None):
    """Frechet distance between Gaussians fit to two sets of images in pixel space (ours; for small images such as
    relay stage 1's 16x16 faces, docs/relay.md): each image (C,H,W) is flattened to C*H*W values as given ([-1,1]),
    optionally projected onto the top `pcs` principal components of `real` (fit on real alone, centred at its mean),
    then the mean and covariance (n - 1) of each set in float64 go to frechet_distance. Each set needs more images
    than dimensions (C*H*W, or pcs), so that its covariance can be full rank. Pixels, not perception: it sees the
    first two moments only (a Gaussian with real's moments scores ~0), and it is biased upwards at small n."""
    x, y = (torch.as_tensor(t).detach().cpu().double() for t in (fake, real))
    if x.dim() < 2 or y.dim() < 2 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"pixel_frechet: fake {tuple(x.shape)} and real {tuple(y.shape)} must be batches of "
                         f"images of one size")
    x, y = x.flatten(1), y.flatten(1)
    dim = y.shape[1]
    if pcs is not None and not 1 <= int(pcs) <= dim:
        raise ValueError(f"pixel_frechet: pcs={pcs} must be between 1 and the {dim} values of an image")
    d = dim if pcs is None else int(pcs)
    for name, z in (('fake', x), ('real', y)):
        if len(z) <= d:
            raise ValueError(f"pixel_frechet: {len(z)} {name} images are too few for a {d}-dim covariance (it "
                             f"needs more than {d}; use more images or pcs below {len(z)})")
        if not torch.isfinite(z).all():
            raise ValueError(f"pixel_frechet: the {name} images hold NaN or inf")
    if pcs is not None:  # principal axes of the real set: right singular vectors of the centred real images
        mu = y.mean(0)
        axes = torch.linalg.svd(y - mu, full_matrices=False).Vh[:d]
        x, y = (x - mu) @ axes.T, (y - mu) @ axes.T
    return frechet_distance(x.mean(0), torch.cov(x.T).reshape(d, d), y.mean(0), torch.cov(y.T).reshape(d, d))


def compute_metrics(pred, gt, lr=None, lpips=None, y_channel=False):
    """Per-image lists: psnr, ssim, flat_noise (+ psnr_y, ssim_y), consistency and grid_texture if lr given, lpips
    if a callable is given."""
    out = {"psnr": psnr(pred, gt).tolist(), "ssim": ssim(pred, gt).tolist(), "flat_noise": flat_noise(pred, gt).tolist()}
    if y_channel:
        out.update(psnr_y=psnr(pred, gt, True).tolist(), ssim_y=ssim(pred, gt, True).tolist())
    if lr is not None:
        out["consistency"] = consistency(pred, lr).tolist()
        out["grid_texture"] = grid_texture(pred, _batch(pred).shape[-1] // _batch(lr).shape[-1]).tolist()
    if lpips is not None:
        out["lpips"] = lpips(pred, gt).tolist()
    return out


def mean_metrics(per_image):
    """Lists -> means, plus n (the number of images)."""
    out = {k: sum(v) / len(v) for k, v in per_image.items() if v}
    return dict(out, n=max((len(v) for v in per_image.values()), default=0))
