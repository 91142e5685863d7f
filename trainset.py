"""The data of a training run: the training and held-out sets of a task, and the batches each rank draws.

Held-out images are never trained on: --val-data, DATA/val, the first --holdout images, or for sr16_128 DREAM's 100
CelebA-HQ validation faces (data.download('celebahq_16_128')); training those faces takes --smoke-on-eval-set.
A training set sharing an image (content, or name within one DATA) with its held-out set is refused.
sr16_128 without --data trains on FFHQ at 128 (DREAM's training set), downloaded once into the cache.
The batch order is a pure function of the step (StepBatches), so a resumed run sees the batches it would have seen.
"""
import os
import signal

import torch

import data
import download
from runtime import UsageError

DREAM_EVAL_SET = 'celebahq_16_128'  # DREAM's 100 CelebA-HQ validation faces (data.download): held out, never trained on


def check_data_flags(a):
    """Before any set-up: training needs --data, unless --smoke-on-eval-set asks to train on DREAM's faces."""
    info = a.task_info
    if a.smoke_on_eval_set and (a.data is not None or a.task != 'sr16_128'):
        raise UsageError(f"--smoke-on-eval-set trains on DREAM's {DREAM_EVAL_SET} images: only --task sr16_128, "
                         'without --data')
    if a.data is None and not a.smoke_on_eval_set and a.task != 'sr16_128':  # sr16_128 downloads FFHQ (datasets)
        if info['kind'] == 'sr':
            sizes = f"--lr {info['lr']} --hr {info['hr']}"
            how = f'`python data.py prepare SRC DST {sizes}`'
            if info['hr'] <= 128:
                how += f' or FFHQ faces with `python data.py download ffhq128 --n 5000 {sizes}`'
        else:
            how = '`python data.py download celebahq256` (pip install pyarrow) or any folder of images'
        raise UsageError(f'--data is required: give a training set, e.g. {how}')


def ffhq_cache():
    """Where `train.py --task sr16_128` without --data keeps FFHQ at 16 -> 128: $DREAM_RELAY_CACHE/ffhq128_16_128."""
    return os.path.join(download.cache_dir(), 'ffhq128_16_128')


def fetch_ffhq(a):
    """sr16_128 without --data: FFHQ's 70,000 thumbnails (DREAM's training set), downloaded once into the cache after
    saying how much; a.data then names the folder (so the checkpoint records it). Under DDP, download it first."""
    dest = ffhq_cache()
    done = os.path.isfile(os.path.join(dest, 'download.json'))
    if not done:
        if int(os.environ.get('WORLD_SIZE', '1')) > 1:
            raise UsageError(f'no --data: download FFHQ before a multi-process run: python data.py download ffhq128 '
                             f'--dest {dest}')
        print(f"no --data: downloading FFHQ's 128x128 thumbnails (70,000 faces, DREAM's training set, about "
              f"{download.FFHQ128['approx_bytes'] / 1e9:.1f} GB; CC BY-NC-SA 4.0, non-commercial) into {dest}; "
              'this happens once (resumable: run again after an interruption)', flush=True)
    a.data = str(download.ffhq128(dest, n=None, lr=16, hr=128))


def datasets(a):
    """(train set, held-out set, note). Held-out: --val-data, DATA/val, the first --holdout images, or for sr16_128
    DREAM's 100 validation faces. Those faces are never trained on, unless --smoke-on-eval-set says so."""
    info = a.task_info
    if info['kind'] == 'sr':
        def make(root):
            return data.SRPairs(root, info['lr'], info['hr'])
    else:
        def make(root):
            return data.ImageFolder(root, info['res'])
    if a.data is None and a.smoke_on_eval_set:
        print(f"WARNING: --smoke-on-eval-set: training and evaluating on DREAM's 100 validation faces "
              f'({DREAM_EVAL_SET}): a smoke test of the code, not a result')
        root = data.download(DREAM_EVAL_SET)  # a failure is a one-line data.DataError
        train = make(root)
        return train, train, f'WARNING: the training images ({DREAM_EVAL_SET})'
    if a.data is None and a.task == 'sr16_128':
        fetch_ffhq(a)
    train_root, split_val = data.split_root(a.data)
    if split_val is not None and train_root == a.data:  # DATA/val without DATA/train: DATA would include DATA/val
        raise UsageError(f'{a.data} has val/ but no train/: training on {a.data} would include its held-out images; '
                         f'move the training images into {a.data}/train')
    val_root = a.val_data or split_val
    train = make(train_root)
    if val_root is not None:
        held = make(val_root)
        data.check_disjoint(train, held, same_source=val_root == split_val)
        return train, held, f'held-out set {val_root}'
    if a.holdout:
        if a.holdout >= len(train):
            raise UsageError(f'--holdout {a.holdout} leaves no training images (data set has {len(train)})')
        kept = torch.utils.data.Subset(train, range(a.holdout, len(train)))
        held = torch.utils.data.Subset(train, range(a.holdout))
        return kept, held, f'held out the first {a.holdout} images'
    if a.task == 'sr16_128':
        held = make(data.download(DREAM_EVAL_SET))
        data.check_disjoint(train, held, same_source=False)
        return train, held, f"DREAM's 100 validation faces ({DREAM_EVAL_SET})"
    return train, train, 'WARNING: no held-out split, evaluating on training images'


class StepBatches(torch.utils.data.Sampler):
    """Batch indices as a pure function of the micro-step: a fresh permutation per epoch (seed, epoch), each
    rank taking its slice of the global batch. Resuming at step s reproduces the exact data order."""

    def __init__(self, n, batch, seed, rank, world, start):
        self.n, self.batch, self.seed, self.rank, self.world, self.start = n, batch, seed, rank, world, start
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise UsageError(f'data set has {n} images, fewer than the global batch {batch * world}')

    def __iter__(self):
        step, perm, epoch = self.start, None, -1
        while True:
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            first = (i * self.world + self.rank) * self.batch
            yield perm[first:first + self.batch].tolist()
            step += 1


def worker_init(_):
    """Loader workers ignore SIGINT and SIGTERM: Ctrl-C, torchrun (killpg) and schedulers signal the whole process
    group, and the main process stops the run at a step boundary with a checkpoint. Workers still exit when the
    loader shuts down or the main process dies (torch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(train_set, a, dist_info, start_step):
    workers = a.workers
    if workers < 0:  # the default: 4 on CUDA, none on the CPU (workers there only compete for the same cores)
        workers = 4 if dist_info.device.type == 'cuda' else 0
    batches = StepBatches(len(train_set), a.batch_size, a.seed, dist_info.rank, dist_info.world,
                          start_step * a.grad_accum)
    return torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=workers,
                                       pin_memory=dist_info.device.type == 'cuda', persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(a.seed), worker_init_fn=worker_init)


def to_device(batch, device, fmt, batch_size):
    """Tensors of a batch on the device, with SR3's random horizontal flips (from the checkpointed torch RNG)."""
    batch = {k: v.to(device, non_blocking=True).contiguous(memory_format=fmt) for k, v in batch.items()
             if torch.is_tensor(v)}
    flip = (torch.rand(batch_size) < 0.5).to(device)[:, None, None, None]
    return {k: torch.where(flip, v.flip(-1), v) for k, v in batch.items()}
