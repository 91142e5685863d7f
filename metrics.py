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
* LPIPS (AlexNet, `lpips` package, only when its weights are already on disk) on [-1,1] inputs, the
  package's convention; the DREAM code feeds [0,1], so its LPIPS numbers are not comparable.
"""
import os

import torch

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


def compute_metrics(pred, gt, lr=None, lpips=None, y_channel=False):
    """Per-image lists: psnr, ssim (+ psnr_y, ssim_y), consistency if lr given, lpips if a callable is given."""
    out = {"psnr": psnr(pred, gt).tolist(), "ssim": ssim(pred, gt).tolist()}
    if y_channel:
        out.update(psnr_y=psnr(pred, gt, True).tolist(), ssim_y=ssim(pred, gt, True).tolist())
    if lr is not None:
        out["consistency"] = consistency(pred, lr).tolist()
    if lpips is not None:
        out["lpips"] = lpips(pred, gt).tolist()
    return out


def mean_metrics(per_image):
    """Lists -> means, plus n (the number of images)."""
    out = {k: sum(v) / len(v) for k, v in per_image.items() if v}
    return dict(out, n=max((len(v) for v in per_image.values()), default=0))
