"""Relay stage 1 (EDM, 16x16 faces) tracked with a number as well as its grid (issue 29, item 4): the Frechet
distance between generated and real faces on their pixels or principal components (metrics.pixel_frechet), beside
the references that give it a scale.

    python experiments/relay_stage1.py --ckpt runs/relay16/ckpt_0002000.pt runs/relay16/ckpt_0004000.pt \
        pretrained/relay16.pt --labels "2000 it." "4000 it." "relay16.pt (shipped)"

Real faces: --data as `train.py --task relay16 --holdout 100` reads them (data.ImageFolder at 16: centre crop, PIL
bicubic). Two reference sets, each with its own principal components (--pcs k; 768 = all pixels, no projection):
* heldout: faces 00000-00099, never trained on. All are CelebA-HQ; the training faces are 300 CelebA-HQ and 2600
  UTKFace, so even real training faces are far from them. 100 faces allow k <= 99, not the 768 pixels;
* train: half A of faces 00100-02999 (a fixed random half, 1450 faces), the distribution the model learns.
Faces of the other half, B, are the real samples of the reference rows, so every real-vs-real row is disjoint:
* real faces: n faces of half B (the noise floor at that n; against heldout also the training / held-out gap);
  heldout halves: 50 vs 50 held-out faces (heldout only, n = 50);
* mean face: n copies of half B's mean face; blurred faces: the same n faces blurred (Gaussian, sigma 1 px);
* Gaussian: n draws of N(mean, covariance) of half B's 768 pixels: noise with the faces' first two moments, no
  face in it, which the Frechet distance cannot tell from faces (it sees those moments only);
* each --ckpt: stage 1 as `sample.py --relay` samples it (EMA weights, unit Gaussian latents, EDM Heun --steps 40,
  clamped to [-1, 1]; fp32, latents from a CPU generator seeded with the row's seed, in batches of 250), the first n
  of the seed's draws. --n-first adds counts for the first seed only (the 768-pixel rows: 1000 samples).
A row needs more samples than dimensions on both sides (k < n): 768 pixels only for n = 1000 against train.
Rows -> OUT/stage1_frechet.csv; mean ± std (min-max) over --seeds per row kind -> OUT/stage1_frechet.md. Samples
are cached in --cache (per checkpoint, seed, steps and count), so a second run only recomputes the distances.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import metrics  # noqa: E402
import relay  # noqa: E402
from checkpoint import load_for_sampling, load_model  # noqa: E402
from common import fmt, write_results  # noqa: E402

COLUMNS = 'task label reference n_real seed step n_samples k frechet ckpt'.split()
BATCH = 250


def real_faces(root, res, holdout, split_seed=0):
    """(heldout, train half A, train half B): (n, 3, res, res) in [-1, 1], as train.py reads the relay16 task."""
    ds = data.ImageFolder(root, res)
    faces = torch.stack([ds[i]['image'] for i in range(len(ds))])
    held, train = faces[:holdout], faces[holdout:]
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    half = len(train) // 2
    return held, train[perm[:half]], train[perm[half:]]


def blur(x, sigma=1.0, radius=3):
    """Separable Gaussian blur with reflect padding."""
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = (k / k.sum()).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode='reflect'), k.view(-1, 1, 1, 2 * radius + 1), groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode='reflect'), k.view(-1, 1, 2 * radius + 1, 1), groups=x.shape[1])


def gaussian_like(faces, n, generator):
    """n draws of N(mean, covariance) of the faces' flattened pixels (float64), shaped as the faces."""
    x = faces.double().flatten(1)
    w, v = torch.linalg.eigh(torch.cov(x.T))
    eps = torch.randn(n, x.shape[1], generator=generator, dtype=torch.float64)
    return (x.mean(0) + (eps * w.clamp_min(0).sqrt()) @ v.T).view(n, *faces.shape[1:])


def reference_sets(half_b, n, seed):
    """label -> the n images of each training-free reference (seed picks the faces of half B and the draws)."""
    g = torch.Generator().manual_seed(1000 + seed)
    pick = half_b[torch.randperm(len(half_b), generator=g)[:n]]
    return {'real faces (train half B)': pick, 'mean face (half B)': half_b.mean(0, keepdim=True).expand(n, -1, -1, -1),
            'blurred faces (half B, sigma 1 px)': blur(pick),
            'Gaussian with the moments of half B': gaussian_like(half_b, n, g)}


@torch.inference_mode()
def stage1_samples(ckpt, n, seed, steps, cache):
    """n stage-1 samples of a checkpoint, EDM Heun as sample.py --relay's stage 1, in fp32; cached."""
    ck = load_for_sampling(ckpt)
    key = f"{os.path.basename(os.path.dirname(os.path.abspath(ckpt)))}_{os.path.basename(ckpt)[:-3]}"
    path = os.path.join(cache, f'{key}_step{ck["step"]}_s{seed}_steps{steps}_n{n}.pt')
    if os.path.isfile(path):
        return torch.load(path, weights_only=True), ck
    net, cfg = load_model(ckpt)
    if not cfg['task'].startswith('relay') or '_' in cfg['task']:
        raise SystemExit(f"{ckpt}: a {cfg['task']} checkpoint, not a relay stage 1 (relayL)")
    D, res = relay.EDMPrecond(net), int(cfg['task'][len('relay'):])
    g, out = torch.Generator().manual_seed(seed), []
    for i in range(0, n, BATCH):
        latents = torch.randn(min(BATCH, n - i), 3, res, res, generator=g)
        out.append(relay.edm_sampler(D, latents, steps=steps, generator=g).float().clamp(-1, 1))
    x = torch.cat(out)
    os.makedirs(cache, exist_ok=True)
    torch.save(x, path)
    print(f'{ckpt}: {n} samples, seed {seed} -> {path}', flush=True)
    return x, ck


def score(rows, label, fake, refs, ks, seed, step, ckpt=''):
    """One row per reference set and k that the sample count allows (k < n on both sides)."""
    for ref_name, real in refs.items():
        for k in ks:
            dims = real[0].numel()
            if k >= len(fake) or k >= len(real) or k > dims:
                continue
            fd = metrics.pixel_frechet(fake, real, pcs=None if k == dims else k)
            rows.append(dict(task='relay16', label=label, reference=ref_name, n_real=len(real), seed=seed, step=step,
                             n_samples=len(fake), k=k, frechet=round(fd, 4), ckpt=ckpt))


def summary(rows):
    """Markdown: one line per (reference, k, label, n_samples), frechet as mean ± std (min-max) over seeds."""
    lines = ['| reference | k | label | n | seeds | Frechet distance |', '|---|---|---|---|---|---|']
    groups = {}
    for r in rows:
        groups.setdefault((r['reference'], r['k'], r['label'], r['n_samples']), []).append(r['frechet'])
    for (ref, k, label, n), vals in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f'| {ref} | {k} | {label} | {n} | {len(vals)} | {fmt(vals, 2)} |')
    return '\n'.join(lines)


def counts(a, seed):
    return sorted(set(a.n + (a.n_first if seed == a.seeds[0] else [])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--ckpt', nargs='*', default=[], help='relay stage-1 checkpoints (full or exported)')
    ap.add_argument('--labels', nargs='*', help='one per --ckpt (default: "<step> it.")')
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data', 'faces'))
    ap.add_argument('--res', type=int, default=16)
    ap.add_argument('--holdout', type=int, default=100, help='the first N sorted faces are held out (train.py --holdout)')
    ap.add_argument('--n', type=int, nargs='+', default=[64, 500], help='sample counts')
    ap.add_argument('--n-first', type=int, nargs='*', default=[1000], help='sample counts for the first seed only')
    ap.add_argument('--pcs', type=int, nargs='+', default=[32, 768], help='principal components (768: all pixels)')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--steps', type=int, default=40, help='EDM Heun steps (sample.py --relay: 40)')
    ap.add_argument('--cache', default=os.path.join(ROOT, 'runs', 'relay_stage1'))
    ap.add_argument('--out', default=os.path.join(ROOT, 'results', 'relay'))
    a = ap.parse_args()
    labels = a.labels or [None] * len(a.ckpt)
    if len(labels) != len(a.ckpt):
        raise SystemExit('--labels: one per --ckpt')
    torch.set_num_threads(1)
    held, half_a, half_b = real_faces(a.data, a.res, a.holdout)
    refs = {'heldout': held, 'train half A': half_a}
    print(f'real faces: {len(held)} held out, train halves {len(half_a)} + {len(half_b)}', flush=True)
    rows = []
    for seed in a.seeds:  # real vs real at 50 vs 50: the held-out set's own floor
        perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(2000 + seed))
        half = len(held) // 2
        score(rows, f'heldout halves ({half} vs {len(held) - half})', held[perm[:half]], {'heldout': held[perm[half:]]},
              a.pcs, seed, '')
        for n in counts(a, seed):
            for label, x in reference_sets(half_b, n, seed).items():
                score(rows, label, x, refs, a.pcs, seed, '')
    for ckpt, label in zip(a.ckpt, labels):
        for seed in a.seeds:
            x, ck = stage1_samples(ckpt, max(counts(a, seed)), seed, a.steps, a.cache)
            for n in counts(a, seed):
                score(rows, label or f"{ck['step']} it.", x[:n], refs, a.pcs, seed, ck['step'], ckpt)
    path = os.path.join(a.out, 'stage1_frechet.csv')
    write_results(path, rows, COLUMNS, os.path.join(a.out, 'stage1_frechet.md'), summary(rows))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
