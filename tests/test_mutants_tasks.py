"""Tests for the mutants of tasks.py that a full mutmut run left alive or untested (issue 31;
results/reliability/tasks_survivors.md): the task names and their errors, the resolution check, the flags a
stage-2 sampler and a network are built from, compute_loss's dispatch to the three losses, the random batch, and
time_iterations (on a fake clock, with stand-ins for the network and the loss that record what they are given).
Each asserts a written-out contract or a hand value, not the code under test."""
import argparse

import pytest
import torch
import torch.nn as nn

import diffusion
import relay
import tasks
from runtime import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- task names
@pytest.mark.parametrize('name, info', [
    ('sr16_128', dict(kind='sr', lr=16, hr=128, res=128)),
    ('sr1_2', dict(kind='sr', lr=1, hr=2, res=2)),  # the smallest L and H with 0 < L < H
    ('relay64', dict(kind='relay1', lr=64, hr=64, res=64)),
    ('relay1', dict(kind='relay1', lr=1, hr=1, res=1)),
    ('relay64_256', dict(kind='relay2', lr=64, hr=256, res=256, block=4)),
    ('relay16_32', dict(kind='relay2', lr=16, hr=32, res=32, block=2)),
])
def test_task_names_parse_to_their_resolutions(name, info):
    assert tasks.parse_task(name) == info


@pytest.mark.parametrize('name, says', [
    ('foo', 'srL_H'), (None, 'srL_H'), ('', 'srL_H'),
    ('sr16', 'srL_H'),  # SR needs both resolutions
    ('relay0', '0 < L < H'), ('sr0_16', '0 < L < H'), ('sr32_16', '0 < L < H'), ('sr16_16', '0 < L < H'),
    ('relay16_16', '0 < L < H'),
    ('relay64_96', 'multiple of L=64'),
])
def test_bad_task_names_are_one_line_naming_the_task_and_the_rule(name, says):
    with pytest.raises(UsageError) as err:
        tasks.parse_task(name)
    msg = str(err.value)
    assert f"'{name}'" in msg and says in msg and '\n' not in msg


def test_resolution_must_divide_by_the_unets_downsampling():
    """small and paper halve 4 times (5 levels): 16 | res; tiny halves twice (3 levels): 4 | res."""
    for task, model in (('sr8_32', 'small'), ('sr16_128', 'paper'), ('sr2_4', 'tiny'), ('relay16', 'small')):
        tasks.check_resolution(task, model)
    with pytest.raises(UsageError) as err:
        tasks.check_resolution('sr8_24', 'small')  # 24 = 8 * 3: divisible by 8, not by 16
    msg = str(err.value)
    assert "'sr8_24'" in msg and 'resolution 24' in msg and 'by 16' in msg and 'small' in msg and '\n' not in msg
    with pytest.raises(UsageError, match='by 16 for --model paper'):
        tasks.check_resolution('relay8', 'paper')
    with pytest.raises(UsageError, match='by 4 for --model tiny'):
        tasks.check_resolution('sr3_6', 'tiny')
    # an already parsed task is named by its resolution
    with pytest.raises(UsageError) as err:
        tasks.check_resolution(dict(kind='sr', lr=8, hr=24, res=24), 'small')
    assert str(err.value) == "task 'resolution 24': resolution 24 must be divisible by 16 for --model small"


# ----------------------------------------------------------------------------- flags -> sampler, network
def test_relay_projection_reads_the_runs_flags_and_is_off_without_them():
    assert tasks.relay_projection({}) == dict(project=False, project_smooth=0.0)
    assert tasks.relay_projection({})['project_smooth'] is not None
    on = tasks.relay_projection(dict(project=1, project_smooth=2.5))
    assert on == dict(project=True, project_smooth=2.5) and on['project'] is True  # a flag, whatever it was stored as
    assert tasks.relay_projection(dict(project=False, project_smooth=1.0)) == dict(project=False, project_smooth=1.0)


def test_preset_norm_groups_are_8_for_the_small_presets_and_sr3s_32_for_paper():
    assert {m: tasks.preset_norm_groups(m) for m in ('paper', 'small', 'tiny', 'tiny_s2d')} == \
        dict(paper=32, small=8, tiny=8, tiny_s2d=8)


def test_build_model_defaults_to_small_without_checkpointing():
    net = tasks.build_model('relay16')
    assert net.conv_in.in_channels == 3 and net.conv_in.out_channels == 32  # small: 32 channels at the first level
    assert net.grad_checkpoint is False


def test_build_model_passes_checkpointing_and_the_initialisation_on():
    assert tasks.build_model('relay8', 'tiny', grad_checkpoint=True).grad_checkpoint is True
    net = tasks.build_model('relay8', 'tiny', init='zero')  # zero: the output conv starts at 0, the net predicts 0
    out = net(torch.rand(2, 3, 8, 8), torch.tensor([0.3, -0.2]))
    assert out.shape == (2, 3, 8, 8) and torch.count_nonzero(out) == 0


def test_heldout_stacks_the_tensors_of_the_first_n_items_even_one():
    ds = [dict(hr=torch.full((3, 2, 2), float(i)), lr=torch.full((3, 1, 1), -float(i)), name=f'{i:05d}.png')
          for i in range(3)]
    one = tasks.heldout(ds, 1)
    assert set(one) == {'hr', 'lr'} and one['hr'].shape == (1, 3, 2, 2) and one['hr'].sum() == 0
    many = tasks.heldout(ds, 10)  # at most the whole set
    assert many['lr'].shape == (3, 3, 1, 1) and many['lr'].flatten().tolist() == [0.0] * 3 + [-1.0] * 3 + [-2.0] * 3
    assert tasks.heldout(ds[:1], 4)['hr'].shape == (1, 3, 2, 2)


# ----------------------------------------------------------------------------- compute_loss: which loss, which flags
class _Wrapper(nn.Module):
    """What DDP looks like to unwrap(): the network under .module."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


def _recorders(monkeypatch):
    seen = {}

    def sr_loss(self, x0, cond, **kw):
        seen.update(loss='sr', model=self.model, x0=x0, cond=cond, timesteps=self.num_timesteps, **kw)
        return torch.tensor(1.0)

    def record(name):
        def loss(D, y, **kw):
            seen.update(loss=name, D=D, y=y, **kw)
            return torch.tensor(2.0)
        return loss
    monkeypatch.setattr(diffusion.GaussianDiffusion, 'loss', sr_loss)
    monkeypatch.setattr(relay, 'edm_loss', record('edm'))
    monkeypatch.setattr(relay, 'blur_loss', record('blur'))
    return seen


def _batch():
    hr = torch.rand(1, 3, 4, 4)
    return dict(hr=hr, sr=hr.flip(-1), lr=torch.rand(1, 3, 2, 2), image=hr + 1)


def test_sr_loss_gets_the_pair_the_loss_type_and_dream_p_only_with_dream(monkeypatch):
    seen, batch, net = _recorders(monkeypatch), _batch(), nn.Identity()
    cfg = tasks.loss_config('sr2_4', timesteps=7)
    assert tasks.compute_loss(net, batch, cfg).item() == 1.0  # a plain dict
    assert seen['loss'] == 'sr' and seen['model'] is net and seen['timesteps'] == 7
    assert seen['x0'] is batch['hr'] and seen['cond'] is batch['sr']
    assert seen['dream_p'] is None and seen['loss_type'] == 'l1'
    tasks.compute_loss(net, batch, argparse.Namespace(**dict(cfg, dream=True, dream_p=0.4, loss='l2')))  # train.py's
    assert seen['dream_p'] == 0.4 and seen['loss_type'] == 'l2'
    tasks.compute_loss(net, batch, dict(cfg, dream=False, dream_p=0.4))
    assert seen['dream_p'] is None


def test_relay1_is_edms_loss_with_dream_p_and_the_unwrapped_net_for_the_no_grad_pass(monkeypatch):
    seen, batch = _recorders(monkeypatch), _batch()
    inner = nn.Conv2d(3, 3, 1)
    net = _Wrapper(inner)
    tasks.compute_loss(net, batch, tasks.loss_config('relay4', dream=True, dream_p=0.3))
    assert seen['loss'] == 'edm' and seen['y'] is batch['image'] and seen['dream_p'] == 0.3
    assert isinstance(seen['D'], relay.EDMPrecond) and seen['D'].model is net
    assert isinstance(seen['D_nograd'], relay.EDMPrecond) and seen['D_nograd'].model is inner
    tasks.compute_loss(net, batch, tasks.loss_config('relay4', dream_p=0.3))
    assert seen['dream_p'] is None


def test_relay2_is_the_blur_loss_with_the_runs_block_blur_truncation_and_block_noise(monkeypatch):
    seen, batch = _recorders(monkeypatch), _batch()
    inner = nn.Conv2d(3, 3, 1)
    net = _Wrapper(inner)
    cfg = tasks.loss_config('relay2_4', dream=True, dream_p=0.7, blur_sigma_max=1.5, prob_length=0.6,
                            block_noise=0.05)
    tasks.compute_loss(net, batch, cfg)
    assert seen['loss'] == 'blur' and seen['y'] is batch['image'] and seen['D'].model is net
    assert (seen['block'], seen['blur_sigma_max'], seen['prob_length'], seen['block_scale'], seen['dream_p']) == \
        (2, 1.5, 0.6, 0.05, 0.7)
    assert isinstance(seen['D_nograd'], relay.EDMPrecond) and seen['D_nograd'].model is inner
    tasks.compute_loss(net, batch, dict(cfg, dream=False))
    assert seen['dream_p'] is None


# ----------------------------------------------------------------------------- random_batch
@pytest.mark.parametrize('fmt', [torch.contiguous_format, torch.channels_last])
def test_random_batch_has_every_key_in_range_with_sr_the_mirrored_hr(fmt):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        b = tasks.random_batch(tasks.parse_task('sr4_8'), 2, torch.device('cpu'), fmt)
    assert set(b) == {'hr', 'sr', 'lr', 'image'}
    assert b['hr'].shape == b['sr'].shape == b['image'].shape == (2, 3, 8, 8) and b['lr'].shape == (2, 3, 4, 4)
    for k in ('hr', 'lr'):  # U(-1, 1): inside the range and reaching near both ends (384 and 96 draws)
        assert -1 <= b[k].min() < -0.8 and 0.8 < b[k].max() <= 1
    mirrored = b['hr'][..., torch.arange(7, -1, -1)]  # column j of sr is column 7 - j of hr
    assert torch.equal(b['sr'], mirrored) and torch.equal(b['image'], b['hr'])
    for v in b.values():
        assert v.is_contiguous(memory_format=fmt)
        if fmt == torch.channels_last:
            assert not v.is_contiguous()


# ----------------------------------------------------------------------------- time_iterations
class _Clock:
    """perf_counter stand-in: the first of each pair of calls starts a step, the second ends it `durations` later."""

    def __init__(self, durations):
        self.durations, self.calls, self.now = list(durations), 0, 1000.0

    def __call__(self):
        self.calls += 1
        if self.calls % 2 == 0:
            self.now += self.durations.pop(0)
        return self.now


def _time(monkeypatch, cfg, durations, dtype=torch.float32, fmt=torch.contiguous_format, **kw):
    """time_iterations with a fake clock, a 3x3-conv network and a loss stand-in; returns (result, what they saw)."""
    seen = dict(built=[], losses=[], backward=0, steps=0)
    net = nn.Conv2d(3, 3, 3, padding=1).eval()

    def build_model(task, model='small', grad_checkpoint=False, norm_groups=None, upsample='nearest', init='default',
                    **_):
        seen['built'].append((task, model, grad_checkpoint, norm_groups, upsample, init))
        return net

    def compute_loss(model, batch, loss_cfg):
        seen['losses'].append(dict(model=model, training=model.training, batch=batch, cfg=loss_cfg,
                                   autocast=torch.is_autocast_enabled('cpu'),
                                   autocast_dtype=torch.get_autocast_dtype('cpu')))
        loss = model(batch['hr']).square().mean()

        def count(grad):
            seen['backward'] += 1
        loss.register_hook(count)
        return loss

    adam = torch.optim.Adam

    class Adam(adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen['adam'] = self

        def step(self, closure=None):
            seen['steps'] += 1
            return super().step(closure)
    clock = _Clock(durations)
    monkeypatch.setattr(tasks, 'build_model', build_model)
    monkeypatch.setattr(tasks, 'compute_loss', compute_loss)
    monkeypatch.setattr(torch.optim, 'Adam', Adam)
    monkeypatch.setattr(tasks.time, 'perf_counter', clock)
    result = tasks.time_iterations(cfg, torch.device('cpu'), dtype, fmt, **kw)
    seen.update(net=net, clock_calls=clock.calls)
    return result, seen


def test_time_iterations_is_the_median_of_the_steps_after_the_warm_up(monkeypatch):
    cfg = dict(task='sr4_8', model='tiny', batch_size=2)
    # default: 2 timed steps after the warm-up (100 s): median of 1 and 7 s
    result, seen = _time(monkeypatch, cfg, [100.0, 1.0, 7.0, 50.0, 60.0])
    assert result == 4.0 and seen['clock_calls'] == 6 and seen['steps'] == 3
    result, seen = _time(monkeypatch, cfg, [100.0, 5.0, 1.0, 3.0, 60.0], steps=3)
    assert result == 3.0 and seen['clock_calls'] == 8 and seen['steps'] == 4


def test_time_iterations_times_the_runs_network_optimizer_and_batch(monkeypatch):
    cfg = dict(task='sr4_8', model='tiny', batch_size=2, grad_checkpoint=True, norm_groups=4, upsample='bilinear',
               init='zero', lr=3e-4, grad_accum=3)
    _, seen = _time(monkeypatch, cfg, [1.0] * 3, fmt=torch.channels_last)
    assert seen['built'] == [('sr4_8', 'tiny', True, 4, 'bilinear', 'zero')]
    group, = seen['adam'].param_groups
    assert group['lr'] == 3e-4 and list(map(id, group['params'])) == list(map(id, seen['net'].parameters()))
    assert len(seen['losses']) == seen['backward'] == 9 and seen['steps'] == 3  # 3 losses and backward passes a step
    net = seen['net']
    assert net.weight.is_contiguous(memory_format=torch.channels_last) and not net.weight.is_contiguous()
    assert all(p.grad is None for p in net.parameters())  # set to None after each step, as train.py does
    first = seen['losses'][0]
    assert all(s['batch'] is first['batch'] for s in seen['losses'])  # one batch for every step
    assert first['model'] is net and first['training'] and first['cfg'] is cfg
    assert first['batch']['hr'].shape == (2, 3, 8, 8) and first['batch']['lr'].shape == (2, 3, 4, 4)
    assert first['batch']['hr'].is_contiguous(memory_format=torch.channels_last)
    assert not first['autocast']  # fp32: no autocast


def test_time_iterations_defaults_and_bf16_autocast(monkeypatch):
    cfg = dict(task='relay8', model='tiny', batch_size=1)
    _, seen = _time(monkeypatch, cfg, [1.0] * 3, dtype=torch.bfloat16)
    assert seen['built'] == [('relay8', 'tiny', False, None, 'nearest', 'default')]
    assert seen['adam'].param_groups[0]['lr'] == 1e-4 and len(seen['losses']) == seen['backward'] == 3
    assert all(s['autocast'] and s['autocast_dtype'] == torch.bfloat16 for s in seen['losses'])
    assert seen['losses'][0]['batch']['image'].shape == (1, 3, 8, 8)


def test_time_iterations_of_a_real_network_restores_the_random_state(monkeypatch):
    clock = _Clock([3.0, 2.0])
    monkeypatch.setattr(tasks.time, 'perf_counter', clock)
    state = torch.get_rng_state()
    cfg = dict(tasks.loss_config('sr4_8', timesteps=10), model='tiny', batch_size=1)
    assert tasks.time_iterations(cfg, torch.device('cpu'), torch.float32, steps=1) == 2.0
    after = torch.rand(4)
    torch.set_rng_state(state)
    assert torch.equal(after, torch.rand(4))
