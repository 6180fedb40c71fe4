"""Distillation on the accelerator's device and over several processes: the meta-gradient, a few MTT/ATT iterations
and DM split over two CPU processes equal the one-process computation; every tensor of the loops lives on
``accelerator.device`` (on a GPU too, when there is one)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.overrides import TorchFunctionMode

import timm_dd  # noqa: F401
from timm_dd.distill import (
    DistributionMatching, ExpertPool, Shards, TrajectoryMatching, get_preset, save_trajectory,
)
from timm_dd.distill.matching import cpu_compiler_available

REPO = Path(__file__).resolve().parents[1]
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU'))]


def test_two_processes_give_the_one_process_gradient_and_images(tmp_path):
    (tmp_path / 'buf').mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1')
    cmd = [str(Path(sys.executable).with_name('accelerate')), 'launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
           str(REPO / 'tests' / 'scripts' / 'mp_distill.py'), str(tmp_path / 'out.json'), str(tmp_path / 'buf')]
    has_cxx = cpu_compiler_available()
    cmd += ['compile'] if has_cxx else []  # also the compiled inner step (torch.compile needs a C++ compiler)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_split_equals_one_process(json.loads((tmp_path / 'out.json').read_text()), has_cxx)


def assert_split_equals_one_process(out: dict, compiled: bool = False) -> None:
    """What ``tests/scripts/mp_distill.py`` wrote under two processes equals its one-process computation."""
    assert out['world'] == 2
    for mode in ('unrolled', 'recompute'):
        for method in ('mtt', 'att'):
            grad = out[f'{mode}-{method}']
            assert grad['images'] < 1e-5 and grad['lr'] < 1e-5 and grad['loss'] < 1e-6, (mode, method, grad)
            assert grad['n_opt'][0] == grad['n_opt'][1]
            run = out[f'run-{mode}-{method}']
            assert run['images'] < 1e-5 and run['lr'] < 1e-5 and run['same_on_all'], (mode, method, run)
            assert run['moved'] > 1e-3  # the images did change: the comparison is not vacuous
    for method in ('mtt', 'att'):  # a memory budget (one kept graph, two recomputed steps) splits the same way
        grad = out[f'budget-{method}']
        assert grad['images'] < 1e-5 and grad['lr'] < 1e-5 and grad['loss'] < 1e-6, (method, grad)
        assert grad['n_opt'][0] == grad['n_opt'][1]
    for mode in ('unrolled', 'recompute') if compiled else ():
        grad = out[f'compiled-{mode}']  # fp32: eager one-process vs compiled split differ by summation order only
        assert grad['images'] < 1e-4 and grad['lr'] < 1e-4 and grad['loss'] < 1e-6, (mode, grad)
    assert out['dm']['images'] < 1e-5 and out['dm']['moved'] > 1e-4
    assert out['eval']['split'] == out['eval']['ref'] and len(out['eval']['ref']) == 3


def test_batch_norm_networks_cannot_split_the_minibatch():
    model = timm.create_model('resnet18_dd', num_classes=2, in_chans=1, img_size=8, widths=[4, 4, 8, 8])
    Shards().check_model(model)  # one process: fine
    with pytest.raises(ValueError, match='batch norm'):
        Shards(0, 2).check_model(model)


class _DeviceRecorder(TorchFunctionMode):
    """Records the device of every tensor passed to or returned by a torch function."""

    def __init__(self):
        super().__init__()
        self.devices = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(args, kwargs, out):
            self.devices.setdefault(t.device.type, set()).add(getattr(func, '__name__', str(func)))
        return out


def _tensors(*objs):
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            yield from _tensors(*obj)
        elif isinstance(obj, dict):
            yield from _tensors(*obj.values())


class _Acc:
    """The attributes of ``accelerate.Accelerator`` the distillers use, for a chosen device in one process."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.num_processes, self.process_index, self.is_main_process = 1, 0, True

    def wait_for_everyone(self):
        pass


def _experts(folder, model):
    th = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        traj = [th + 0.01 * k * torch.randn(th.shape, generator=g) for k in range(5)]
        save_trajectory(folder / f'expert_{i:05d}.safetensors', traj,
                        {'arch': 'convnet3', 'params': [[n, list(p.shape)] for n, p in model.named_parameters()],
                         'zca': False})
    return ExpertPool(folder, min_epochs=3)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('method,grad_mode', [('mtt', 'unrolled'), ('mtt', 'recompute'), ('att', 'recompute'),
                                              ('dm', None)])
def test_every_tensor_of_the_loop_is_on_the_accelerator_device(tmp_path, device, method, grad_mode):
    """The inner loops see only tensors on ``accelerator.device``. The images, expert slices and model start on
    the CPU; the only CPU tensors allowed are the CPU generators' draws before they are moved (and on a GPU the
    test fails if anything of the loop's arithmetic stays on the CPU)."""
    model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1])
    acc = _Acc(device)
    if method == 'dm':
        cfg = get_preset(None, dict(method='dm', ipc=2, batch_real=4, iterations=2, eval_every=0, checkpoint_every=1))
        real = torch.randn(8, 1, 8, 8)
        distiller = DistributionMatching(
            cfg, images, labels, real, torch.arange(8) % 2,
            lambda: timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4), tmp_path,
            accelerator=acc)
        tracked = [distiller.images]
    else:
        (tmp_path / 'buf').mkdir()
        cfg = get_preset(None, dict(method=method, ipc=2, syn_steps=2, expert_epochs=2, max_start_epoch=2,
                                    iterations=2, eval_every=0, checkpoint_every=1, grad_mode=grad_mode,
                                    ema_decay=0.9 if method == 'att' else None))
        distiller = TrajectoryMatching(cfg, images, labels, model, _experts(tmp_path / 'buf', model), tmp_path,
                                       accelerator=acc)
        tracked = [distiller.images, distiller.labels, distiller.syn_lr, *distiller.fmodel.module.parameters()]
        plan_device = distiller.device
        assert plan_device == acc.device
    assert all(t.device.type == acc.device.type for t in tracked)
    with _DeviceRecorder() as rec:
        distiller.step()
    assert acc.device.type in rec.devices
    if device != 'cpu':
        # CPU tensors may only come from drawing random numbers (CPU generators) and from reading the expert file
        allowed = {'randperm', 'randint', 'rand', 'randn', 'uniform_', 'to', 'get_tensor', 'pin_memory', '__get__',
                   'numel', 'split', 'pop', '__getitem__', 'item', '__len__', 'dim', 'size', '__format__', 'long',
                   'float', 'int', 'view', 'tolist', 'clone', 'detach', 'cpu', 'zeros', 'arange', 'repeat_interleave',
                   'nonzero', 'flatten', '__eq__', 'unique', 'isfinite', 'all'}
        assert set(rec.devices.get('cpu', set())) <= allowed, rec.devices['cpu'] - allowed
    distiller.save()
    assert torch.load(tmp_path / 'checkpoint.pt', weights_only=True)['images'].device.type == 'cpu'


@pytest.mark.parametrize('device', DEVICES)
def test_expert_training_runs_on_the_device(device):
    from timm_dd.distill.experts import ExpertConfig, train_expert
    cfg = ExpertConfig(arch='convnet3', model_kwargs=dict(num_classes=2, in_chans=1, img_size=8, width=4),
                       epochs=2, batch_size=4)
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8) % 2
    with _DeviceRecorder() as rec:
        traj = train_expert(images, labels, cfg, 0, test=(images, labels), device=device)
    assert len(traj) == 3 and all(t.device.type == 'cpu' for t in traj)  # stored on the CPU
    assert device in rec.devices
    if device != 'cpu':
        assert not {'conv2d', 'linear', 'cross_entropy'} & rec.devices.get('cpu', set())


@pytest.mark.parametrize('method', ['mtt', 'att', 'dm'])
def test_distillers_move_their_state_to_the_accelerator_device(tmp_path, method):
    """On a CPU machine the test above cannot tell the devices apart; here the accelerator's device is ``meta``
    while every input starts on the CPU, so state left behind on the CPU is caught (nothing is computed)."""
    model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    acc = _Acc('meta')
    if method == 'dm':
        cfg = get_preset(None, dict(method='dm', ipc=2, batch_real=4, iterations=2, eval_every=0))
        distiller = DistributionMatching(cfg, images, labels, torch.randn(8, 1, 8, 8), torch.arange(8) % 2,
                                         lambda: timm.create_model('convnet3', num_classes=2, in_chans=1,
                                                                   img_size=8, width=4), accelerator=acc)
        state = [distiller.images]
    else:
        (tmp_path / 'buf').mkdir()
        cfg = get_preset(None, dict(method=method, ipc=2, syn_steps=2, expert_epochs=2, max_start_epoch=2,
                                    ema_decay=0.9 if method == 'att' else None))
        distiller = TrajectoryMatching(cfg, images, labels, model, _experts(tmp_path / 'buf', model), accelerator=acc)
        state = [distiller.images, distiller.labels, distiller.syn_lr, *distiller.fmodel.module.parameters()]
        from timm_dd.distill import plan_steps
        plan = plan_steps(4, 2, None, 8, distiller.dsa, torch.Generator().manual_seed(0), distiller.device)
        state += list(plan.indices) + [t for d in plan.draws for t in d.params.values()]
        if distiller.ema is not None:
            state.append(distiller.ema)
    assert state and all(t.device.type == 'meta' for t in state), [t.device for t in state]
