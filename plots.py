"""Training curves: loss vs step (raw and smoothed) and one panel per evaluation metric, from a run's log.jsonl."""
import json
import math
import os

_NOT_EVAL = {"step", "time", "elapsed", "lr", "epoch", "it_s", "imgs_s", "img_s", "grad_norm", "train_s",
             "eval_steps", "n"}  # log keys that are not metrics
_BASELINE_PREFIXES = ("bicubic_", "input_")  # the baselines an evaluation logs beside the model: constant, not plotted


def _read_jsonl(path):
    """The JSON objects with a numeric `step`; a missing file, junk or a half-written last line are skipped."""
    rows = []
    with open(path, errors="replace") if os.path.isfile(path) else open(os.devnull) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in rows if isinstance(r, dict) and _num(r.get("step"))]


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ema(values, alpha=0.95):
    """Debiased exponential moving average (as TensorBoard's smoothing)."""
    out, m = [], 0.0
    for i, v in enumerate(values):
        m = alpha * m + (1 - alpha) * v
        out.append(m / (1 - alpha ** (i + 1)))
    return out


def plot_loss(log_jsonl_path, out_png, smoothing=0.95):
    """Loss vs step (raw light, EMA dark, log y) + one panel per eval metric. Returns False if nothing to plot."""
    rows = _read_jsonl(log_jsonl_path)
    train = [(r["step"], r["loss"]) for r in rows if _num(r.get("loss"))]
    evals = [r for r in rows if "loss" not in r]
    first = ["psnr", "ssim", "lpips", "consistency"]
    keys = sorted({k for r in evals for k, v in r.items()
                   if k not in _NOT_EVAL and not k.startswith(_BASELINE_PREFIXES) and _num(v)},
                  key=lambda k: (first.index(k) if k in first else len(first), k))[:4]
    if not train and not keys:
        return False
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state
    n = int(bool(train)) + len(keys)
    fig = Figure(figsize=(5 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    if train:
        (steps, loss), ax = zip(*train), axes[0]
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="raw")
        ax.plot(steps, ema(loss, smoothing), color="tab:blue", lw=1.6, label=f"EMA {smoothing}")
        if min(loss) > 0:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title="training loss")
        ax.legend()
    for ax, k in zip(axes[int(bool(train)):], keys):
        pts = [(r["step"], r[k]) for r in evals if _num(r.get(k))]
        ax.plot(*zip(*pts), "o-", color="tab:orange", ms=3)
        ax.set(xlabel="step", ylabel=k, title=f"eval {k}")
    for ax in axes:
        ax.grid(alpha=0.3)
    # fixed margins in inches: tight_layout costs a full extra draw (seconds at every evaluation)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=1.0 / w, right=1 - 0.2 / w, bottom=0.55 / h, top=1 - 0.35 / h, wspace=0.35)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return True
