"""Where the code runs: device, precision (from the hardware's flags, not a timing), DDP set-up, seeds, generators.

    device = pick_device('auto')
    dtype, why = pick_dtype('auto', device)        # bf16 autocast where the hardware has native bf16, else fp32
    dist_info = setup_ddp(device)                  # torchrun's RANK / WORLD_SIZE -> a process group (or none)
    seed_everything(seed, dist_info.rank)          # each rank its own noise: seed + 1000 * rank

Also the one error of the command lines: UsageError, a problem with flags, data or checkpoints, printed as one line.
"""
import argparse
import datetime
import os
import random
import sys
import tomllib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 1000  # rank r seeds its RNGs with seed + 1000 * r
CPU_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')  # /proc/cpuinfo flags of CPUs with native bf16 matmul / conv


class UsageError(Exception):
    """A problem with flags, data or checkpoints: the command lines report it as one line, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, and reads recipe files: a parser with a
    `--config` flag replaces each `--config FILE` by the flags of FILE's keys, put before it, so a flag after --config
    overrides the file and one before it is overridden (argparse keeps the last value). FILE is TOML whose keys are
    the flags' argparse names: `max_iters = 2100` stands for --max-iters=2100, `dream = true` for --dream."""

    def error(self, message):
        raise UsageError(message)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if '--config' in self._option_string_actions:
            args = self.expand_configs(args)
        return super().parse_args(args, namespace)

    def expand_configs(self, argv):
        out = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg == '--config' and i + 1 < len(argv):
                out += self.config_flags(argv[i + 1]) + [arg, argv[i + 1]]
                i += 2
                continue
            if arg.startswith('--config='):
                out += self.config_flags(arg.split('=', 1)[1])
            out.append(arg)
            i += 1
        return out

    def config_flags(self, path):
        """The flags a TOML recipe stands for. An unknown key, a bad value, a missing or invalid file: one line
        naming it."""
        try:
            with open(path, 'rb') as f:
                values = tomllib.load(f)
        except OSError as e:
            raise UsageError(f'--config {path}: {e.strerror}')
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f'--config {path}: not valid TOML ({e})')
        actions = {action.dest: action for action in self._actions if action.option_strings and action.dest != 'help'}
        flags = []
        for key, value in values.items():
            action = actions.get(key)
            if action is None or key == 'config':
                raise UsageError(f"unknown key '{key}' in {path} (the keys are the flags with underscores, "
                                 'e.g. max_iters)')
            flag = action.option_strings[-1]
            if isinstance(action, argparse._StoreTrueAction):
                if not isinstance(value, bool):
                    raise UsageError(f'{key} = {value!r} in {path}: must be true or false')
                if value:
                    flags.append(flag)
            elif isinstance(value, (bool, dict, list)):
                raise UsageError(f'{key} = {value!r} in {path}: must be a number or a string')
            else:
                flags.append(f'{flag}={value}')
        try:
            super().parse_args(flags)  # a bad value: one line naming the file
        except UsageError as e:
            raise UsageError(f'{path}: {e}')
        return flags


# ----------------------------------------------------------------------------- device and precision
def pick_device(name):
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is a UsageError."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda: no CUDA device is available')
    if name == 'cuda':
        return torch.device('cuda')
    if name == 'auto' and torch.cuda.is_available():
        return torch.device('cuda')
    return torch.device('cpu')


def cpu_flags(cpuinfo_path='/proc/cpuinfo'):
    """The CPU's feature flags (the 'flags' line of /proc/cpuinfo) as a set; empty where there is no such file."""
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return set()


def pick_dtype(name, device, cpuinfo_path='/proc/cpuinfo'):
    """(dtype, reason). 'auto' decides from the hardware, the same way every time on the same machine:
    CUDA: bf16 autocast where the GPU has native bf16 (torch.cuda.is_bf16_supported(including_emulation=False):
    Ampere and later; by default torch also counts pre-Ampere emulation), else fp32 (fp16 would need loss scaling);
    CPU: bf16 autocast + channels_last where /proc/cpuinfo has amx_bf16 or avx512_bf16 (torch's capability string
    says only 'AVX512' on AMX machines), else fp32 (bf16 autocast falls back to slow kernels on AVX2)."""
    if name == 'fp32':
        return torch.float32, 'requested'
    if name == 'bf16':
        return torch.bfloat16, 'requested'
    if device.type == 'cuda':
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, 'CUDA with native bf16'
        return torch.float32, 'this GPU has no bf16 in hardware (torch.cuda.is_bf16_supported(including_emulation=False) ' \
                              'is False; emulation is slow): fp32, not fp16 autocast (which would need a GradScaler)'
    found = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags(cpuinfo_path)]
    capability = torch.backends.cpu.get_cpu_capability()
    if not found:
        return torch.float32, f'CPU flags have no {" / ".join(CPU_BF16_FLAGS)} (capability {capability}): ' \
                              'bf16 autocast would hit slow kernels'
    return torch.bfloat16, f'CPU flags {" ".join(found)}: native bf16'


def describe(dtype):
    """The training path a dtype stands for, as train.py and bench.py print it."""
    return 'bf16 autocast + channels_last' if dtype == torch.bfloat16 else 'fp32'


def memory_format(dtype, device):
    """channels_last for bf16 autocast or on CUDA; NCHW for fp32 on the CPU (channels_last is slower there)."""
    if dtype == torch.bfloat16 or device.type == 'cuda':
        return torch.channels_last
    return torch.contiguous_format


def autocast(device, dtype):
    """Autocast in `dtype` (off for fp32): only the network runs in it, the losses build their inputs in fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def allow_tf32(device):
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ----------------------------------------------------------------------------- DDP
@dataclass
class DistInfo:
    ddp: bool
    rank: int
    world: int
    device: torch.device


def setup_ddp(device, timeout_s=None):
    """Under torchrun (RANK and WORLD_SIZE set): this process's GPU and a process group (nccl on GPU, gloo on CPU).
    timeout_s: how long a collective (a barrier) may wait for the other ranks (default: torch's, 10 min for NCCL);
    train.py sizes it to its evaluation, which rank 0 runs while the others wait."""
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank = int(os.environ['RANK']) if ddp else 0
    world = int(os.environ['WORLD_SIZE']) if ddp else 1
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))  # this process's GPU (0 without torchrun)
        torch.cuda.set_device(device)
    if ddp:
        options = {} if timeout_s is None else dict(timeout=datetime.timedelta(seconds=timeout_s))
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', **options)
    return DistInfo(ddp, rank, world, device)


def teardown_ddp(dist_info):
    if dist_info.ddp and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- seeds and generators
def rank_seed(seed, rank):
    return seed + RANK_SEED_STRIDE * rank


def seed_everything(seed, rank=0):
    """Python, NumPy and torch (CPU and CUDA) RNGs; each DDP rank draws its own noise, flips and dropout."""
    s = rank_seed(seed, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def make_generator(seed, device):
    """A torch.Generator on `device` (samplers that draw on the images' device need one there)."""
    return torch.Generator(torch.device(device)).manual_seed(seed)


def generator_on(device, generator):
    """`generator` if it lives on `device`, else a new one there seeded from it (None stays None)."""
    device = torch.device(device)
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(2 ** 62, (), generator=generator))
    return make_generator(seed, device)

