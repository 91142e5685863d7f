"""Checkpoints: one plain dict in one file, written atomically, read back with torch.load(weights_only=True).

    {'model', 'ema', 'opt': state dicts, 'step': int, 'train_s': float, 'args': the flags (plain types),
     'rng': rank 0's RNG states, 'rng_ranks': every rank's RNG states, indexed by rank (DDP)}

The RNG states hold Python's, NumPy's and torch's CPU generator, and under CUDA this process's own GPU generator
(torch.cuda.get_rng_state(device)), so each DDP rank resumes its own noise exactly.
"""
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from runtime import UsageError
from tasks import model_from_args

REQUIRED_KEYS = {'model', 'ema', 'opt', 'rng', 'step'}
# This version's checkpoints: stamped with FORMAT by save_checkpoint, and their flags name the whole network. A file
# from another version of dream-relay (another FORMAT, or flags without these) is refused in one line, not converted.
FORMAT = 1
REQUIRED_ARGS = ('task', 'model', 'norm_groups', 'upsample')


def save_checkpoint(path, state):
    """Atomic: write a temp file, flush + fsync, rename over the old file, fsync the folder. A failure
    (disk full, ...) leaves the previous file as it was, removes the temp file and raises UsageError."""
    tmp = f'{path}.tmp{os.getpid()}'
    state = {'format': FORMAT, **state}  # an exported model keeps its own format name
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        raise UsageError(f"could not write {path} ({' '.join(str(e).split())}); the previous file is untouched")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(folder)  # the rename itself survives a power cut
    os.close(folder)


def load_checkpoint(path, task=None, model=None):
    """Load a checkpoint (weights_only) and check it fits the given task / model size; one-line errors."""
    if not os.path.isfile(path):
        raise UsageError(f'checkpoint {path}: no such file')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(ck, dict) or not isinstance(ck.get('args'), dict) or not REQUIRED_KEYS <= ck.keys():
            raise ValueError
    except Exception as e:
        raise UsageError(f'checkpoint {path}: not a dream-relay checkpoint or corrupted ({type(e).__name__})')
    check_version(path, ck, FORMAT)
    for key, want in (('task', task), ('model', model)):
        if want is not None and ck['args'][key] != want:
            raise UsageError(f"checkpoint {path} is for --{key} {ck['args'][key]}, not {want}")
    return ck


def check_version(path, ck, want):
    """A file of this version: format `want` (an unstamped file counts as current) and flags naming the network."""
    missing = ', '.join(k for k in REQUIRED_ARGS if k not in ck['args'])
    found = ck.get('format', want)
    if found != want or missing:
        why = f'format {found}, not {want}' if found != want else f'its flags lack {missing}'
        raise UsageError(f'checkpoint {path}: written by another version of dream-relay ({why}); retrain with this one')


def load_weights(path, pairs):
    """module.load_state_dict(state) for (module, state) pairs; a mismatch (e.g. an older preset) is one line."""
    try:
        for module, state in pairs:
            module.load_state_dict(state)
    except Exception as e:
        raise UsageError(f"checkpoint {path}: does not fit the network ({' '.join(str(e).split())[:160]})")


def load_model(path, device='cpu', ema=True, task=None):
    """The (EMA) network of a checkpoint, full or exported (export_pretrained), in eval mode, with its flags.
    For sampling and evaluation. An exported file holds the EMA weights only, in bf16: they come back as fp32."""
    ck = load_for_sampling(path, task=task)
    if not ema and 'model' not in ck:
        raise UsageError(f'checkpoint {path}: an exported model holds the EMA weights only')
    net = model_from_args(ck['args'])
    load_weights(path, [(net, ck['ema'] if ema else ck['model'])])
    return net.to(device).eval(), ck['args']


# ----------------------------------------------------------------------------- shipped models (pretrained/)
# An exported model: {'format': PRETRAINED_FORMAT, 'ema': the EMA state dict in bf16, 'args': the run's flags (task,
# model, schedule, sampling options: all that model_from_args / make_diffusion / sr_sampling read), 'step', 'train_s'}.
PRETRAINED_FORMAT = 'dream-relay-pretrained-v1'


def load_for_sampling(path, task=None):
    """A full checkpoint (load_checkpoint's checks) or an exported one, read once with weights_only; an exported
    one's floating-point weights are cast back to fp32. One-line UsageError for a missing, foreign or corrupt file."""
    if not os.path.isfile(path):
        raise UsageError(f'checkpoint {path}: no such file')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(ck, dict) or not isinstance(ck.get('args'), dict) or not isinstance(ck.get('ema'), dict):
            raise ValueError
        exported = ck.get('format') == PRETRAINED_FORMAT
        if not exported and not REQUIRED_KEYS <= ck.keys():
            raise ValueError
    except Exception as e:
        raise UsageError(f'checkpoint {path}: not a dream-relay checkpoint or corrupted ({type(e).__name__})')
    check_version(path, ck, PRETRAINED_FORMAT if exported else FORMAT)
    if task is not None and ck['args']['task'] != task:
        raise UsageError(f"checkpoint {path} is for --task {ck['args']['task']}, not {task}")
    if exported:
        ck = dict(ck, ema={k: v.float() if v.is_floating_point() else v for k, v in ck['ema'].items()})
    return ck


def export_pretrained(src_ckpt, dst, project=None):
    """Write the shipped form of a training checkpoint to `dst` (atomically, save_checkpoint): the EMA weights only,
    floating-point tensors cast to bf16 (half the bytes of fp32, fp32's exponent range), the run's flags and its
    step. Loadable with torch.load(weights_only=True); load_model reads it back in fp32. Returns dst's bytes.
    project True / False overrides the run's --project in the shipped flags: a sampling option (the exact
    low-resolution / tile-mean consistency step) that training never reads, so the file samples with or without it
    by default; None keeps the run's."""
    ck = load_checkpoint(src_ckpt)
    ema = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ck['ema'].items()}
    args = dict(ck['args']) if project is None else dict(ck['args'], project=bool(project))
    state = {'format': PRETRAINED_FORMAT, 'ema': ema, 'args': args, 'step': ck['step'],
             'train_s': ck.get('train_s', 0.0)}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    save_checkpoint(dst, state)
    return os.path.getsize(dst)


# ----------------------------------------------------------------------------- RNG states
def rng_state(device=torch.device('cpu')):
    """This process's RNG states as plain types: Python, NumPy (its uint32 array as int64 for weights_only),
    torch CPU, and on CUDA the generator of this process's own GPU."""
    name, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=[name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gauss],
                 torch=torch.get_rng_state())
    if torch.device(device).type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=torch.device('cpu')):
    """Restore rng_state(device)."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    torch.set_rng_state(state['torch'])
    device = torch.device(device)
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def gather_rng_states(device, world):
    """Every rank's rng_state, indexed by rank (a collective: every rank calls it; world 1 needs no group)."""
    mine = rng_state(device)
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def rank_rng_state(ck, rank, world):
    """The RNG state this rank resumes from: its own entry of 'rng_ranks', or for a single process 'rng'
    (checkpoints before per-rank states). None when the checkpoint has no state for this rank."""
    ranks = ck.get('rng_ranks')
    if ranks is not None and len(ranks) == world:
        return ranks[rank]
    if world == 1:
        return ck['rng']
    return None


def main(argv=None):
    """python checkpoint.py export SRC DST: the shipped form of a checkpoint (export_pretrained)."""
    import argparse
    import sys
    p = argparse.ArgumentParser(description='Export a training checkpoint as a shipped model (EMA weights, bf16).')
    sub = p.add_subparsers(dest='command', required=True)
    export = sub.add_parser('export', help='SRC (a ckpt.pt of train.py) -> DST (EMA weights in bf16 and the flags)')
    export.add_argument('src')
    export.add_argument('dst')
    export.add_argument('--project', action=argparse.BooleanOptionalAction, default=None,
                        help="the shipped file's sampling default for the consistency step (default: the run's)")
    a = p.parse_args(argv)
    try:
        size = export_pretrained(a.src, a.dst, project=a.project)
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    print(f'wrote {a.dst} ({size / 2 ** 20:.2f} MiB)')


if __name__ == '__main__':
    main()
