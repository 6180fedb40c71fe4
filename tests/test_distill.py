"""Distillation: meta-gradients (finite differences, unrolled == recompute), ATT step selection, resume, divergence
guards, expert files, DM and the CLI. Everything is tiny (ConvNet width 4-8 at 8-16 px) so the file runs quickly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_dd  # noqa: F401
from timm_dd.augment import DSA
from timm_dd.distill import (
    DistillationDiverged, DistributionMatching, ExpertFileError, ExpertPool, ExpertTrajectory, FlatModel,
    StepGradient, TrajectoryMatching, get_preset, list_presets, plan_steps, save_trajectory, train_experts,
    trajectory_match, ExpertConfig,
)
from timm_dd.distill import experts as experts_mod
from timm_dd.distill.matching import (
    StepPlan, _select_step, cpu_compiler_available, match_recompute, match_unrolled,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # tiny convolutions: OpenMP hand-offs cost more than the work, badly so on a shared, loaded 2-core box
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(dtype=torch.float64, n=6, size=8, chans=1, classes=3, width=4, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model('convnet3', num_classes=classes, in_chans=chans, img_size=size, width=width).to(dtype)
    fm = FlatModel(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, chans, size, size, generator=g, dtype=dtype)
    y = torch.arange(n) % classes
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = th0 + 0.05 * torch.randn(th0.shape, generator=g, dtype=dtype)
    return fm, x, y, th0, target


def _loss_only(fm, x, y, lr, th0, target, plan, dsa, method='mtt'):
    return match_recompute(fm, x, y, lr, th0, target, plan, dsa, method).loss


@pytest.mark.parametrize('mode', ['unrolled', 'recompute'])
def test_meta_gradient_matches_finite_differences(mode):
    fm, x, y, th0, target = _problem()
    dsa = DSA()
    plan = plan_steps(x.shape[0], 3, 4, x.shape[-1], dsa, torch.Generator().manual_seed(1))
    lr = torch.tensor(0.05, dtype=torch.float64)
    fn = match_unrolled if mode == 'unrolled' else match_recompute
    res = fn(fm, x, y, lr, th0, target, plan, dsa)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1e-5
    fd_x = (_loss_only(fm, x + eps * v, y, lr, th0, target, plan, dsa)
            - _loss_only(fm, x - eps * v, y, lr, th0, target, plan, dsa)) / (2 * eps)
    assert float((res.grad_images * v).sum()) == pytest.approx(float(fd_x), rel=1e-5)
    fd_lr = (_loss_only(fm, x, y, lr + eps, th0, target, plan, dsa)
             - _loss_only(fm, x, y, lr - eps, th0, target, plan, dsa)) / (2 * eps)
    assert float(res.grad_lr) == pytest.approx(float(fd_lr), rel=1e-5)


@pytest.mark.parametrize('method', ['mtt', 'att'])
def test_unrolled_equals_recompute_fp32(method):
    fm, x, y, th0, target = _problem(torch.float32, n=10, size=16, chans=3, classes=5, width=8)
    dsa = DSA()
    plan = plan_steps(x.shape[0], 6, None, x.shape[-1], dsa, torch.Generator().manual_seed(3))
    lr = torch.tensor(0.02)
    a = match_unrolled(fm, x, y, lr, th0, target, plan, dsa, method)
    b = match_recompute(fm, x, y, lr, th0, target, plan, dsa, method)
    assert a.n_opt == b.n_opt
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5)
    rel = float((a.grad_images - b.grad_images).norm() / a.grad_images.norm())
    assert rel < 1e-5
    assert float(a.grad_lr) == pytest.approx(float(b.grad_lr), rel=1e-5)


_NO_CXX = not cpu_compiler_available()


@pytest.mark.skipif(_NO_CXX, reason='torch.compile on the CPU needs a C++ compiler')
def test_compiled_step_gives_the_same_meta_gradient():
    # float64 separates a different function from summation order: eager and compiled must agree to ~1e-12
    fm, x, y, th0, target = _problem(n=6, size=8, chans=2, classes=3, width=4)
    dsa = DSA()
    lr = torch.tensor(0.05, dtype=torch.float64)
    compiled = StepGradient(fm, compile=True)
    for method, mode in (('mtt', 'unrolled'), ('mtt', 'recompute'), ('att', 'recompute')):
        plan = plan_steps(x.shape[0], 4, None, x.shape[-1], dsa, torch.Generator().manual_seed(6))
        a = trajectory_match(mode, fm, x, y, lr, th0, target, plan, dsa, method)
        b = trajectory_match(mode, compiled, x, y, lr, th0, target, plan, dsa, method)
        assert a.n_opt == b.n_opt
        assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-12)
        torch.testing.assert_close(b.grad_images, a.grad_images, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(b.grad_lr, a.grad_lr, rtol=1e-9, atol=1e-13)
    assert float(a.grad_images.abs().sum()) > 0


@pytest.mark.skipif(_NO_CXX, reason='torch.compile on the CPU needs a C++ compiler')
def test_compile_setting_runs_the_compiled_step(tmp_path):
    torch.manual_seed(0)  # the same network, hence the same fake experts
    eager = _tm(tmp_path / 'a', 'mtt')(None)
    torch.manual_seed(0)
    compiled = _tm(tmp_path / 'b', 'mtt', compile=True)(None)
    assert compiled.step_grad.compile and not eager.step_grad.compile
    eager.run(iterations=2)
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    compiled.run(iterations=2)
    # it did compile: one graph with and one without the outer gradient (recompute), whatever strides DSA left on
    # the 1-channel images
    assert 1 <= torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs <= 2
    torch.testing.assert_close(compiled.images, eager.images, rtol=1e-4, atol=1e-5)
    assert not torch.equal(compiled.images, _tm(tmp_path / 'c', 'mtt')(None).images)
    with pytest.raises(ValueError, match='compile applies to trajectory matching'):
        get_preset(None, dict(method='dm', compile=True))
    bn = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4, norm='batch')
    with pytest.raises(ValueError, match='without batch norm'):
        StepGradient(FlatModel(bn), compile=True)


def test_standard_layout_gives_row_major_strides():
    from timm_dd.distill.matching import _standard_layout
    x = torch.randn(3, 1, 4, 4).permute(0, 1, 3, 2)  # not contiguous
    y = torch.randn(3, 4, 4, 1).permute(0, 3, 1, 2)  # "contiguous", with a channel stride of 1
    assert y.is_contiguous() and y.stride() == (16, 1, 4, 1)
    for t in (x, y):
        out = _standard_layout(t)
        assert out.stride() == (16, 16, 4, 1) and torch.equal(out, t)
    z = torch.randn(3, 1, 4, 4)
    assert _standard_layout(z) is z


def test_att_step_selection_rule():
    assert _select_step([3.0, 1.0, 2.0, 1.0, 5.0]) == 4  # ties go to the later step
    assert _select_step([1e30, 1e31]) == 1  # best starts at +inf, not 10000
    assert _select_step([2.0, 2.0, 2.0]) == 3


@pytest.mark.parametrize('mode', ['unrolled', 'recompute'])
def test_att_picks_argmin_and_matches_truncated_mtt(mode):
    fm, x, y, th0, _ = _problem()
    plan = plan_steps(x.shape[0], 5, 3, x.shape[-1], None, torch.Generator().manual_seed(4))
    lr = torch.tensor(0.1, dtype=torch.float64)
    theta = th0.clone()
    for k in range(2):  # the student's own θ_2 (plus a little noise) is the closest point to the target
        t = theta.clone().requires_grad_(True)
        idx = plan.indices[k]
        g, = torch.autograd.grad(F.cross_entropy(fm(t, x[idx]), y[idx]), t)
        theta = theta - lr * g
    target = theta + 1e-6 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(5), dtype=theta.dtype)
    fn = match_unrolled if mode == 'unrolled' else match_recompute
    att = fn(fm, x, y, lr, th0, target, plan, None, 'att')
    assert att.n_opt == 2
    assert min(att.distances) == att.distances[1]
    mtt = fn(fm, x, y, lr, th0, target, StepPlan(plan.indices[:2], plan.draws[:2]), None, 'mtt')
    assert float(att.loss) == pytest.approx(float(mtt.loss), rel=1e-12)
    torch.testing.assert_close(att.grad_images, mtt.grad_images, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(att.grad_lr, mtt.grad_lr, rtol=1e-10, atol=1e-14)


# -- outer loop ----------------------------------------------------------------------------------------------------

def _fake_experts(folder: Path, model, num=2, epochs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    th = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for i in range(num):
        traj, cur = [], th + 0.01 * torch.randn(th.shape, generator=g)
        for _ in range(epochs + 1):
            traj.append(cur.clone())
            cur = cur + 0.01 * torch.randn(th.shape, generator=g)
        save_trajectory(folder / f'expert_{i:05d}.safetensors', traj,
                        {'arch': 'convnet3', 'params': [[n, list(p.shape)] for n, p in model.named_parameters()],
                         'zca': False})
    return ExpertPool(folder, min_epochs=3)


def _tm(tmp_path, method='att', **overrides):
    model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
    pool = _fake_experts(tmp_path / 'buf', model)
    cfg = get_preset(None, dict(method=method, ipc=2, syn_steps=3, expert_epochs=2, max_start_epoch=2, lr_img=10.0,
                                lr_lr=1e-5, lr_teacher=0.01, iterations=4, eval_every=0, checkpoint_every=2,
                                ema_decay=0.9 if method == 'att' else None, **overrides))
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1])
    return lambda out: TrajectoryMatching(cfg, images, labels, model, pool, out_dir=out)


@pytest.mark.parametrize('method', ['att', 'mtt'])
def test_resume_equals_uninterrupted(tmp_path, method):
    make = _tm(tmp_path, method)
    full = make(tmp_path / 'full')
    full.run()
    part = make(tmp_path / 'part')
    part.run(iterations=2)
    resumed = make(tmp_path / 'part')
    assert resumed.resume() and resumed.iteration == 2
    resumed.run()
    assert torch.equal(full.images, resumed.images)
    assert torch.equal(full.syn_lr, resumed.syn_lr)
    if method == 'att':
        assert torch.equal(full.ema, resumed.ema)
    assert not torch.equal(full.images, make(None).images)  # it did learn something


def test_nan_and_nonpositive_lr_guards_keep_checkpoint(tmp_path):
    make = _tm(tmp_path)
    tm = make(tmp_path / 'run')
    tm.run(iterations=2)
    ckpt = tm.checkpoint_path.read_bytes()
    with torch.no_grad():
        tm.images[0, 0, 0, 0] = float('nan')
    with pytest.raises(DistillationDiverged, match='NaN') as e:
        tm.run()
    assert e.value.iteration == 2 and 'last good checkpoint' in str(e.value)
    assert tm.checkpoint_path.read_bytes() == ckpt
    tm = make(tmp_path / 'run')
    assert tm.resume()
    with torch.no_grad():
        tm.syn_lr.fill_(-0.01)
    with pytest.raises(DistillationDiverged, match='positive'):
        tm.step()
    # a step size pushed to <= 0 by the update itself is caught after the step
    tm = make(tmp_path / 'run')
    tm.resume()
    tm.opt_lr.param_groups[0]['lr'] = 1e9
    with pytest.raises(DistillationDiverged):
        tm.run()
    assert tm.checkpoint_path.read_bytes() == ckpt


def test_expert_file_reads_only_requested_epochs(tmp_path, monkeypatch):
    path = save_trajectory(tmp_path / 'e.safetensors', [torch.full((5,), float(k)) for k in range(4)],
                           {'arch': 'x', 'params': [['w', [5]]]})
    exp = ExpertTrajectory(path)
    assert exp.num_epochs == 3 and exp.meta['arch'] == 'x'
    requested = []
    real_open = experts_mod.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def get_tensor(self, key):
            requested.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(experts_mod, 'safe_open', Spy)
    assert torch.equal(exp.get(2), torch.full((5,), 2.0))
    assert requested == ['epoch_0002']
    monkeypatch.undo()
    with pytest.raises(ExpertFileError, match='out of range'):
        exp.get(4)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ExpertFileError, match='truncated or corrupt'):
        ExpertTrajectory(path)
    with pytest.raises(ExpertFileError, match='not found'):
        ExpertTrajectory(tmp_path / 'missing.safetensors')


def test_experts_resumable_and_split_between_processes(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 2
    cfg = ExpertConfig(arch='convnet3', model_kwargs=dict(num_classes=2, in_chans=1, img_size=8, width=4),
                       num_experts=3, epochs=2, batch_size=8, dataset='rand')
    mine = train_experts(x, y, tmp_path, cfg, process_index=1, num_processes=2)
    assert [p.name for p in mine] == ['expert_00001.safetensors'] and mine[0].is_file()
    assert not (tmp_path / 'expert_00000.safetensors').exists()
    with pytest.raises(ExpertFileError, match=r'missing from the numbering \(expert_00000'):
        ExpertPool(tmp_path)  # process 0 has not written its expert yet
    paths = train_experts(x, y, tmp_path, cfg)
    exp = ExpertTrajectory(paths[0])
    assert exp.num_epochs == 2 and exp.meta['epochs'] == 2 and exp.meta['params'][0][0] == 'features.0.weight'
    stamps = [p.stat().st_mtime_ns for p in paths]
    monkeypatch.setattr(experts_mod, 'train_expert', lambda *a, **k: pytest.fail('finished expert retrained'))
    train_experts(x, y, tmp_path, cfg)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    with pytest.raises(ExpertFileError, match='at least'):
        ExpertPool(tmp_path, min_epochs=5)
    paths[2].unlink()  # a buffer whose training was stopped: used, and the set says how many of how many
    pool = ExpertPool(tmp_path)
    assert len(pool) == 2 and pool.provenance()['planned'] == 3
    assert ExpertPool(tmp_path, max_experts=2).provenance().get('planned') is None  # asked for 2: nothing missing
    from timm_dd.distilled import DistilledSet
    from timm_dd.distilled.card import render_card
    dset = DistilledSet(images=torch.zeros(2, 1, 8, 8), labels=torch.arange(2), method='MTT', source_dataset='rand',
                        ipc=1, image_space='pixel', extra={'experts': pool.provenance()})
    assert 'Expert trajectories: 2 experts (of the 3 its recipe planned) of 2 epochs' in render_card(dset.to_config())


def test_dm_reduces_loss():
    # two striped classes at 16 px (at 8 px the instance-normed 2x2 maps of a width-8 net carry almost no signal)
    g = torch.Generator().manual_seed(0)
    stripes = torch.sin(torch.arange(16.) * 1.5).view(1, 16).expand(16, 16)
    real_y = torch.arange(40) % 2
    real = 2 * torch.stack([stripes, stripes.T]).unsqueeze(1)[real_y] + 0.3 * torch.randn(40, 1, 16, 16, generator=g)
    cfg = get_preset(None, dict(method='dm', ipc=2, lr_img=1.0, batch_real=20, iterations=40, eval_every=0,
                                checkpoint_every=0))
    dm = DistributionMatching(cfg, torch.randn(4, 1, 16, 16, generator=g), torch.tensor([0, 0, 1, 1]), real, real_y,
                              lambda: timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=16, width=16))
    probe = range(1000, 1008)  # networks and draws the run never saw
    before = sum(float(dm.loss(dm.images.detach(), i)) for i in probe)
    dm.run()
    after = sum(float(dm.loss(dm.images.detach(), i)) for i in probe)
    assert after < 0.8 * before


def test_presets():
    names = list_presets()
    for ds in ('cifar10', 'cifar100', 'tiny-imagenet'):
        for ipc in (1, 10, 50):
            assert f'{ds}-ipc{ipc}-mtt' in names and f'{ds}-ipc{ipc}-dm' in names
    cfg = get_preset('cifar10-ipc10-mtt')
    assert (cfg.syn_steps, cfg.max_start_epoch, cfg.lr_img, cfg.lr_lr, cfg.lr_teacher, cfg.zca) == \
        (30, 20, 100.0, 1e-5, 0.001, True)
    att = get_preset('cifar10-ipc1-att', {'lr_lr': '1e-6'})
    assert att.syn_steps == 80 and att.expert_epochs == 4 and att.lr_lr == 1e-6 and att.ema_decay == 0.9999
    assert all(get_preset(n).source for n in names)
    for subset in ('imagenette', 'imagewoof', 'imagefruit', 'imagemeow', 'imagesquawk', 'imageyellow'):
        for ipc in (1, 10):  # MTT's ImageNet subsets: ConvNet-5 at 128 px, the author's settings (mtt-distillation#1)
            sub = get_preset(f'{subset}-ipc{ipc}-mtt')
            assert (sub.dataset, sub.arch, sub.image_size, sub.lr_img, sub.lr_lr, sub.batch_syn) == \
                (subset, 'convnet5', 128, 1e5, 1e-6, 20 if ipc == 10 else None)
    tesla = get_preset('imagenet64-ipc1-tesla')  # TESLA's README command: soft labels from the target expert
    assert (tesla.dataset, tesla.arch, tesla.syn_steps, tesla.expert_epochs, tesla.batch_syn, tesla.teacher_label,
            tesla.num_experts) == ('imagenet64', 'convnet4', 10, 3, 100, True, 50)
    assert get_preset('imagewoof-ipc1-att').lr_lr == 5e-8 and get_preset('imagenette-ipc10-att').ema_decay == 0.999
    with pytest.raises(ValueError, match='unknown distillation config keys'):
        get_preset('cifar10-ipc10-mtt', {'lr_imgg': 1})
    with pytest.raises(ValueError, match='unknown preset'):
        get_preset('cifar11-ipc10-mtt')


def test_cli_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    common = ['--preset', 'digits-ipc10-att', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}',
              '--set', 'ipc=2', '--set', 'num_experts=1', '--set', 'expert_train_epochs=3', '--set', 'syn_steps=2',
              '--set', 'max_start_epoch=1']
    run = lambda *a: subprocess.run([sys.executable, str(REPO / 'distill.py'), *a], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
    r = run('experts', *common, '--output', str(tmp_path / 'buf'))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'buf' / 'expert_00000.safetensors').is_file()
    r = run('distill', *common, '--experts', str(tmp_path / 'buf'), '--output', str(tmp_path / 'run'),
            '--iterations', '2', '--set', 'eval_every=1', '--set', 'eval_epochs=1', '--grad-mode', 'unrolled')
    assert r.returncode == 0, r.stderr[-2000:]
    if (sys.platform.startswith('linux') and 'jemalloc' not in os.environ.get('LD_PRELOAD', '')
            and not torch.cuda.is_available()):
        assert 'an allocator that keeps freed memory' in r.stderr  # the CPU tip, where it applies
    out = json.loads(r.stdout.strip().splitlines()[-1])
    from timm_dd.distilled import DistilledSet
    dset = DistilledSet.load(out['out'])
    assert dset.images.shape == (20, 1, 8, 8) and dset.method == 'ATT' and float(dset.lr) > 0
    assert dset.extra['config']['syn_steps'] == 2 and len(dset.extra['history']) == 3
    assert (tmp_path / 'run' / 'grid_000001.png').is_file() and (tmp_path / 'run' / 'distilled_ema').is_dir()
    from PIL import Image
    with Image.open(tmp_path / 'run' / 'grid_000001.png') as periodic:
        with Image.open(tmp_path / 'run' / 'distilled.png') as final:
            assert periodic.size == final.size  # both beside the real images the run started from (two panels)
    # the card states the effective settings (not the authors' after overrides) and the expert buffer used
    card = (Path(out['out']) / 'README.md').read_text()
    assert 'changed here (not the published settings)' in card and 'ipc=2' in card
    assert dset.extra['experts']['experts'] == 1 and dset.extra['experts']['epochs'] == 3
    assert dset.extra['experts']['path'] == str((tmp_path / 'buf').resolve())  # the full path stays in the config
    assert 'buffer `buf`' in card and str(tmp_path / 'buf') not in card and dset.extra['experts']['sha256'][:16] in card
    assert 'Expert trajectories: 1 experts of 3 epochs' in card
    best = DistilledSet.load(tmp_path / 'run' / 'distilled_best')  # the MTT/ATT rule, labelled
    assert 'selects on the test set' in best.extra['selection'] and best.extra['selected_iteration'] in (0, 1, 2)
    r = run('distill', *common, '--experts', str(tmp_path / 'buf'), '--output', str(tmp_path / 'bad'),
            '--iterations', '1', '--no-eval', '--set', 'lr_teacher=-1')
    assert r.returncode == 2 and 'lr_teacher' in r.stderr


def test_a_preset_with_changed_settings_says_so_in_its_source():
    plain = get_preset('cifar10-ipc10-att')
    assert 'changed here' not in plain.source
    changed = get_preset('cifar10-ipc10-att', {'iterations': 20, 'ipc': 10})
    assert changed.source.startswith(plain.source) and 'iterations=20' in changed.source
    assert 'ipc=' not in changed.source  # the preset's own value is not a change
    assert get_preset(None, {'iterations': 3}).source == get_preset(None).source  # no preset: nothing to claim


def test_resume_with_changed_settings_is_refused_or_forced(tmp_path):
    tm = _tm(tmp_path)
    first = tm(tmp_path / 'run')
    first.run(2)
    model = timm.create_model('convnet3', num_classes=2, in_chans=1, img_size=8, width=4)
    cfg = first.cfg.replace(lr_img=1000.0)
    again = TrajectoryMatching(cfg, first.images.detach(), first.labels, model, first.experts, out_dir=tmp_path / 'run')
    with pytest.raises(ValueError, match=r'lr_img: 10\.0 -> 1000\.0.*--force-resume'):
        again.resume()
    assert again.resume(force=True)
    assert again.opt_img.param_groups[0]['lr'] == 1000.0  # the settings run are the settings recorded
    assert again.iteration == 2
    safe = TrajectoryMatching(first.cfg.replace(iterations=10, eval_every=5), first.images.detach(), first.labels,
                              model, first.experts, out_dir=tmp_path / 'run')
    assert safe.resume()  # extending a run or changing its bookkeeping is fine


def test_cifar100_presets_use_cifar10_statistics_as_mtt_does():
    from timm_dd.constants import CIFAR10_MEAN, CIFAR10_STD
    from timm_dd.data import ImageSet, ImageSpace
    from timm_dd.distill.run import normalization_space
    assert get_preset('cifar100-ipc10-mtt').normalization == 'cifar10'
    assert get_preset('cifar100-ipc10-att').normalization == 'cifar10'
    assert get_preset('cifar10-ipc10-mtt').normalization == 'dataset'

    train = ImageSet(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), 
                     normalization=ImageSpace.normalized((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    assert normalization_space(get_preset('cifar100-ipc10-mtt'), train) == ImageSpace(CIFAR10_MEAN, CIFAR10_STD)
    assert normalization_space(get_preset('cifar10-ipc10-mtt'), train) == train.normalization


def test_the_old_name_of_load_distillation_data_still_works_with_a_warning():
    from timm_dd import distill
    cfg = distill.get_preset('digits-ipc10-att', {'image_size': 8})
    with pytest.warns(FutureWarning, match='load_distillation_data'):
        old = distill.prepare_data(cfg)
    new = distill.load_distillation_data(cfg)
    assert torch.equal(old.train.images, new.train.images) and old.description == new.description
