"""The trainer on Accelerate: resume, KD plumbing, stock timm models, clear errors, two CPU processes, CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import timm_dd
from timm_dd.data import load_dataset, select_ipc
from timm_dd.distilled import DistilledSet
from timm_dd.train.config import load_config
from timm_dd.train import create_student, prepare_data, run_experiment
from timm_dd.data import ImageSet
from timm_dd.train.trainer import train_model

REPO = Path(__file__).resolve().parents[1]
TINY_RESNET = dict(widths=(4, 8, 8, 16))


@pytest.fixture(scope='module')
def accelerator():
    return Accelerator(cpu=True)


@pytest.fixture(scope='module')
def digits():
    train, test = load_dataset('digits', 'train'), load_dataset('digits', 'test')
    idx = select_ipc(train.labels, 2, generator=torch.Generator().manual_seed(0))
    sub = train.subset(idx)
    return ImageSet(sub.normalized(), sub.labels, list(sub.class_names), num_classes=10), test


def _loader(accelerator, test, n=100):
    return accelerator.prepare(DataLoader(TensorDataset(test.normalized()[:n], test.labels[:n]), batch_size=50))


def _short_dpkd(**kw):
    base = dict(epochs=6, final_epochs=2, period=1, batch_size=8, eval_every=3, checkpoint_every=2,
                lr=1e-3, kd=False)
    base.update(kw)
    return load_config('dpkd', base)


def _model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model('resnet18_dd', num_classes=10, in_chans=1, **TINY_RESNET)


def test_resume_equals_uninterrupted(tmp_path, accelerator, digits):
    train_set, test = digits
    cfg = _short_dpkd()
    full = _model()
    res_full = train_model(full, train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18_dd',
                           out_dir=tmp_path / 'full')
    part = _model()
    train_model(part, train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18_dd',
                out_dir=tmp_path / 'part', stop_after_epoch=2)
    ckpt = tmp_path / 'part' / 'checkpoint.pt'
    assert torch.load(ckpt, weights_only=True)['state']['epoch'] == 3
    older = ckpt.read_bytes()
    train_model(_model(seed=7), train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18_dd',
                out_dir=tmp_path / 'part', resume=True, stop_after_epoch=4)
    ckpt.write_bytes(older)  # a checkpoint older than the last metrics line (killed between the two writes)
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    res_resumed = train_model(resumed, train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18_dd',
                              out_dir=tmp_path / 'part', resume=True)
    epochs = [json.loads(x)['epoch'] for x in (tmp_path / 'part' / 'metrics.jsonl').read_text().splitlines()]
    assert epochs == list(range(6)), 'a resumed run never repeats an epoch in metrics.jsonl'
    assert sorted(p.name for p in (tmp_path / 'part').iterdir()) == ['checkpoint.pt', 'metrics.jsonl']
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert res_full.final_acc == res_resumed.final_acc
    # keep rates followed the schedule and were logged per epoch
    lines = [json.loads(x) for x in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['keep_rate'] for r in lines] == pytest.approx([cfg.keep_rate_schedule()(e) for e in range(6)])
    assert min(r['keep_rate'] for r in lines) < 1.0


class SpyTeacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = timm.create_model('convnet3', num_classes=10, in_chans=1, width=4)
        self.inputs, self.modes = [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.training)
        return self.net(x)


def test_kd_teacher_eval_no_grad_same_batch(accelerator, digits):
    train_set, test = digits
    teacher = SpyTeacher()
    teacher.train()
    before = [p.detach().clone() for p in teacher.parameters()]
    student = _model()
    seen = []
    student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()) if m.training else None)
    cfg = _short_dpkd(kd=True, epochs=2, eval_every=0, dsa_k=2)
    train_model(student, train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18_dd', teacher=teacher)
    assert teacher.modes and not any(teacher.modes), 'the teacher must run in eval mode'
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters())), 'the teacher must not change'
    assert len(teacher.inputs) == len(seen)
    for t_in, s_in in zip(teacher.inputs, seen):
        assert torch.equal(t_in, s_in), 'teacher and student must see the same augmented batch'
    assert not torch.equal(seen[0], train_set.images[:seen[0].shape[0]])  # it was augmented


def test_stock_timm_model_trains_with_dpkd(accelerator, digits, tmp_path):
    train_set, test = digits
    cfg = _short_dpkd(epochs=3, final_epochs=1, eval_every=0)
    model = timm.create_model('resnet18', num_classes=10, in_chans=1, drop_path_rate=0.1, zero_init_last=False)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_model(model, train_set, _loader(accelerator, test), cfg, accelerator, 'resnet18',
                         out_dir=tmp_path)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert timm_dd.get_keep_rate(model) == pytest.approx(cfg.keep_rate_schedule()(2))
    assert 0.0 <= result.final_acc <= 1.0 and result.num_test_evaluated == 100


def _distilled(tmp_path, class_names=None, size=32, **kw):
    gen = torch.Generator().manual_seed(0)
    dset = DistilledSet(images=torch.randn(20, 1, size, size, generator=gen), labels=torch.arange(10).repeat(2),
                        method='DM', source_dataset='digits', class_names=class_names or [str(i) for i in range(10)],
                        ipc=2, image_space='normalized', normalization={'mean': [0.3053], 'std': [0.3228]}, **kw)
    return dset.save(tmp_path / 'dset')


def test_distilled_set_with_other_classes_is_a_clear_error(tmp_path):
    path = _distilled(tmp_path, class_names=[f'c{i}' for i in range(10)])
    with pytest.raises(ValueError, match='differ from the test set'):
        prepare_data(str(path))


def test_image_size_the_model_cannot_take(tmp_path):
    data = prepare_data(dataset='digits', real_ipc=1)
    data.train.images = torch.nn.functional.interpolate(data.train.images, size=20)
    with pytest.raises(ValueError, match='cannot create alexnet_dd for 1x20x20'):
        create_student('alexnet_dd', data, load_config('baseline'))
    with pytest.raises(ValueError, match='unknown model'):
        create_student('resnet19_dd', data, load_config('baseline'))


def test_teacher_with_other_class_count_is_a_clear_error(tmp_path, accelerator):
    from timm_dd.hub import save_teacher
    teacher = timm.create_model('convnet3', num_classes=5, in_chans=1, width=4)
    folder = save_teacher(teacher, tmp_path / 'teacher', model_args=dict(num_classes=5, in_chans=1, width=4))
    data = prepare_data(dataset='digits', real_ipc=1)
    cfg = load_config('dpkd', dict(epochs=1, teacher=str(folder)))
    with pytest.raises(ValueError, match='teacher .* has 5 classes but the training set has 10'):
        run_experiment(cfg, ['convnet3'], [0], data, tmp_path / 'out', accelerator)


def test_learned_lr_and_soft_labels_from_distilled_set(tmp_path):
    soft = torch.randn(20, 10)
    path = _distilled(tmp_path, soft_labels=soft, lr=0.02)
    with pytest.raises(ValueError, match='--soft-label-temperature'):
        prepare_data(str(path))  # logits without a temperature
    data = prepare_data(str(path), soft_label_temperature=0.5)
    assert data.train.learned_lr == pytest.approx(0.02)
    assert torch.allclose(data.train.labels, torch.softmax(soft / 0.5, dim=1))  # the temperature, applied once
    assert data.test.images.shape == (364, 1, 32, 32)


def _run_cli(args, tmp_path, launcher=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1',
               TIMM_DD_CACHE=str(tmp_path / 'cache'))
    cmd = (launcher or [sys.executable]) + [str(REPO / 'train.py')] + args
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_cpu_processes_count_each_test_image_once(tmp_path):
    accelerate_bin = Path(sys.executable).with_name('accelerate')
    launcher = [str(accelerate_bin), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                '--mixed_precision', 'no', '--dynamo_backend', 'no']
    out = tmp_path / 'out'
    proc = _run_cli(['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '2', '--model', 'convnet3',
                     '--model-kwargs', 'width=4', '--epochs', '2', '--eval-every', '1', '--output', str(out),
                     '--no-plots', '--set', 'test_batch_size=100', 'parallel=ddp'], tmp_path, launcher)
    assert '2 process(es)' in proc.stdout
    result = json.loads((out / 'results.json').read_text())
    # 364 digits test images, sharded over 2 processes in batches of 100: the last batch is padded by Accelerate;
    # gather_for_metrics must drop the duplicates so every image is counted exactly once
    assert [r['test_count'] for r in result['runs']] == [364]
    history = [json.loads(x) for x in (out / 'runs' / 'convnet3' / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    assert len(history) == 2, 'only the main process writes the metrics log'
    assert all(h['test_count'] == 364 for h in history)


def test_cli_cross_architecture_table_and_plots(tmp_path):
    out = tmp_path / 'out'
    proc = _run_cli(['-c', 'dpkd', '--dataset', 'digits', '--real-ipc', '2', '--models', 'convnet3', 'resnet18_dd',
                     '--model-kwargs', 'widths=[4,4,8,8]', '--seeds', '0', '1', '--epochs', '3', '--final-epochs', '1',
                     '--period', '1', '--teacher-epochs', '2', '--output', str(out), '--cpu'], tmp_path)
    assert '| resnet18_dd | 2 |' in proc.stdout and '| teacher convnet3 | 2 |' in proc.stdout
    result = json.loads((out / 'results.json').read_text())
    assert {r['model'] for r in result['runs']} == {'convnet3', 'resnet18_dd'}
    assert result['config']['recipe'] == 'dpkd' and result['config']['kd'] is True
    for name in ('results.md', 'results.png', 'schedules.png', 'args.yaml'):
        assert (out / name).is_file(), name
    assert (out / 'teachers' / 'seed0' / 'model' / 'model.safetensors').is_file()


@pytest.mark.parametrize('student,kwargs,width,recipe', [
    ('convnet3', dict(width=4), 4, 'elf'),
    ('resnet18_dd', dict(TINY_RESNET), 16, 'dpkd'),  # ELF combined with DropPath + KD
])
def test_elf_end_to_end(tmp_path, accelerator, student, kwargs, width, recipe):
    from timm_dd.hub import save_teacher
    phi = timm.create_model('convnet3', num_classes=10, in_chans=1, width=width)
    folder = save_teacher(phi, tmp_path / 'phi', model_args=dict(num_classes=10, in_chans=1, width=width))
    data = prepare_data(dataset='digits', real_ipc=1)
    cfg = load_config(recipe, dict(epochs=2, final_epochs=1, period=1, eval_every=0, elf=True, teacher_epochs=1,
                                   elf_feature_model=str(folder)))
    result = run_experiment(cfg, [student], [0], data, tmp_path / 'out', accelerator, model_kwargs=kwargs)
    assert result.runs[0]['test_count'] == 364
    losses = [json.loads(x)['loss'] for x in
              (tmp_path / 'out' / 'runs' / student / 'seed0' / 'metrics.jsonl').read_text().splitlines()]
    assert all(l > 0 and l == l for l in losses)


def test_elf_feature_model_of_wrong_width_is_a_clear_error(tmp_path, accelerator):
    from timm_dd.hub import save_teacher
    phi = timm.create_model('convnet3', num_classes=10, in_chans=1, width=8)
    folder = save_teacher(phi, tmp_path / 'phi', model_args=dict(num_classes=10, in_chans=1, width=8))
    data = prepare_data(dataset='digits', real_ipc=1)
    cfg = load_config('elf', dict(epochs=1, elf_feature_model=str(folder)))
    with pytest.raises(ValueError, match='use a ConvNet of width 4'):
        run_experiment(cfg, ['convnet3'], [0], data, tmp_path / 'out', accelerator, model_kwargs=dict(width=4))


_RANK1_WRITES = '''
import os, runpy, sys, time
import torch
real_save = torch.save
def watched_save(obj, f, *a, **k):
    # rank 1 is slow and records any attempt to write a file: only the main process may write a shared run file
    time.sleep(0.3)
    with open(os.environ['RANK1_LOG'], 'a') as log:
        log.write(repr(f) + '\\n')
    return real_save(obj, f, *a, **k)
if os.environ.get('RANK') == '1':
    torch.save = watched_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_two_processes_checkpoint_with_a_slow_rank(tmp_path):
    """DDP run under two processes, checkpointing every epoch while rank 1 is slow: one writer, no race."""
    wrapper = tmp_path / 'slow_rank1.py'
    wrapper.write_text(_RANK1_WRITES)
    accelerate_bin = Path(sys.executable).with_name('accelerate')
    out = tmp_path / 'out'
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1',
               TIMM_DD_CACHE=str(tmp_path / 'cache'), RANK1_LOG=str(tmp_path / 'rank1.log'))
    cmd = [str(accelerate_bin), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', str(wrapper), str(REPO / 'train.py'),
           '-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3', '--model-kwargs',
           'width=4', '--epochs', '3', '--eval-every', '0', '--checkpoint-every', '1', '--output', str(out),
           '--no-plots', '--set', 'parallel=ddp', '--keep-checkpoints']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = out / 'runs' / 'convnet3' / 'seed0'
    assert sorted(p.name for p in run_dir.iterdir()) == ['checkpoint.pt', 'metrics.jsonl', 'result.json']
    assert torch.load(run_dir / 'checkpoint.pt', weights_only=True)['state']['epoch'] == 3
    assert not (tmp_path / 'rank1.log').exists(), (tmp_path / 'rank1.log').read_text()


def test_finished_runs_leave_no_resume_checkpoint_unless_kept(tmp_path, accelerator):
    data = prepare_data(dataset='digits', real_ipc=1, image_size=8)
    kwargs = dict(width=4)
    for keep in (False, True):
        cfg = load_config('dpkd', dict(epochs=2, eval_every=0, checkpoint_every=1, keep_checkpoints=keep,
                                       teacher_epochs=1, period=1, final_epochs=1))
        out = tmp_path / f'keep{keep}'
        run_experiment(cfg, ['convnet3'], [0], data, out, accelerator, model_kwargs=kwargs)
        left = sorted(p.relative_to(out).as_posix() for p in out.rglob('checkpoint.pt'))
        assert left == (['runs/convnet3/seed0/checkpoint.pt', 'teachers/seed0/checkpoint.pt'] if keep else [])
        assert (out / 'runs' / 'convnet3' / 'seed0' / 'result.json').is_file()


def test_two_processes_share_the_runs_of_a_table(tmp_path):
    """'runs' parallelism: 2 networks x 2 seeds (+ 2 teachers) over 2 processes, each run trained by one process;
    the table equals the one-process table."""
    args = ['-c', 'dpkd', '--dataset', 'digits', '--real-ipc', '1', '--models', 'convnet3', 'resnet18_dd',
            '--model-kwargs', 'widths=[4,4,8,8]', '--seeds', '0', '1', '--epochs', '2', '--final-epochs', '1',
            '--period', '1', '--teacher-epochs', '1', '--eval-every', '0', '--no-plots']
    one = tmp_path / 'one'
    _run_cli(args + ['--output', str(one)], tmp_path)
    accelerate_bin = Path(sys.executable).with_name('accelerate')
    launcher = [str(accelerate_bin), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                '--mixed_precision', 'no', '--dynamo_backend', 'no']
    two = tmp_path / 'two'
    _run_cli(args + ['--output', str(two)], tmp_path, launcher)
    r1, r2 = (json.loads((d / 'results.json').read_text()) for d in (one, two))
    keys = ('model', 'seed', 'final_acc', 'best_acc', 'best_epoch', 'test_count')
    assert [{k: r[k] for k in keys} for r in r2['runs']] == [{k: r[k] for k in keys} for r in r1['runs']]
    assert [r['final_acc'] for r in r2['teacher_runs']] == [r['final_acc'] for r in r1['teacher_runs']]
    assert [r['process'] for r in r2['runs']] == [0, 1, 0, 1]  # job j on process j % 2, each exactly once
    def rows(d):  # the markdown table without its timing column
        return [line.rsplit('|', 2)[0] for line in (d / 'results.md').read_text().splitlines() if line.startswith('|')]
    assert rows(one) == rows(two) and len(rows(one)) == 5
    for d in (one, two):
        for run in (d / 'runs').glob('*/seed*'):
            assert len((run / 'metrics.jsonl').read_text().splitlines()) == 2, run


def test_stacked_seeds_equal_sequential_runs(accelerator):
    """parallel: vmap trains three seeds at once; each equals its own sequential run."""
    from timm_dd.train.batched import train_seeds_batched
    g = torch.Generator().manual_seed(0)
    train_set = ImageSet(torch.randn(20, 1, 8, 8, generator=g), torch.arange(20) % 4, num_classes=4)
    test = TensorDataset(torch.randn(50, 1, 8, 8, generator=g), torch.arange(50) % 4)
    loader = DataLoader(test, batch_size=16)
    cfg = load_config('baseline', dict(epochs=4, batch_size=8, eval_every=2, lr=0.05))

    def make(seed):
        torch.manual_seed(seed)
        return timm.create_model('convnet3', num_classes=4, in_chans=1, img_size=8, width=8)

    seeds = [0, 1, 2]
    stacked = [make(s) for s in seeds]
    results = train_seeds_batched(stacked, seeds, train_set, loader, cfg, accelerator)
    for seed, model, res in zip(seeds, stacked, results):
        alone = make(seed)
        ref = train_model(alone, train_set, loader, cfg.replace(seed=seed), accelerator, 'convnet3', distributed=False)
        assert [h['test_acc'] for h in res.history] == [h['test_acc'] for h in ref.history]
        for (name, a), b in zip(alone.state_dict().items(), model.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
        init = make(seed).state_dict().values()
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), init))  # training moved them


def test_experiment_with_stacked_seeds_equals_runs(tmp_path, accelerator):
    data = prepare_data(dataset='digits', real_ipc=1)
    tables = {}
    for mode in ('runs', 'vmap'):
        cfg = load_config('baseline', dict(epochs=2, eval_every=0, parallel=mode))
        result = run_experiment(cfg, ['convnet3'], [0, 1], data, tmp_path / mode, accelerator,
                                model_kwargs=dict(width=4))
        tables[mode] = [(r['seed'], r['final_acc'], r['test_count']) for r in result.runs]
    assert tables['vmap'] == tables['runs'] and len(tables['runs']) == 2


def test_stacked_seeds_refuse_batch_norm_and_dpkd(accelerator):
    from timm_dd.train.batched import check_batchable
    bn = timm.create_model('resnet18_dd', num_classes=4, in_chans=1, **TINY_RESNET)
    with pytest.raises(ValueError, match='batch norm'):
        check_batchable(bn, load_config('baseline'))
    conv = timm.create_model('convnet3', num_classes=4, in_chans=1, img_size=8, width=4)
    with pytest.raises(ValueError, match="'drop_path', 'kd'"):
        check_batchable(conv, load_config('dpkd'))


def _tiny_cifar10_copy(root: Path, per_class: int = 2) -> Path:
    """A CIFAR-10 image-folder copy as the shared JPEG copy is laid out: ``root/train.zip``, ``root/test.zip``."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image
    from timm_dd.data import CIFAR10_CLASSES
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        with zipfile.ZipFile(root / f'{split}.zip', 'w') as zf:
            for c in CIFAR10_CLASSES:
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format='PNG')
                    zf.writestr(f'{c}/{i:04d}.png', buf.getvalue())
    return root


@pytest.mark.parametrize('how', ['data-root', 'folder'])
def test_local_cifar10_copy_as_typed_and_found_again_from_a_distilled_set(tmp_path, monkeypatch, capsys, how):
    """`--dataset cifar10 --data-root DIR` reads an image-folder copy; a set distilled from it finds its test split
    again without flags, and names the flags to pass once the folder is gone."""
    from timm_dd.cli import distill as distill_cli
    from timm_dd.cli import train as train_cli
    monkeypatch.setenv('TIMM_DD_DATA', str(tmp_path / 'no_default_data'))
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    root = _tiny_cifar10_copy(tmp_path / 'data' / 'cifar10-jpeg')
    data_args = ['--dataset', 'cifar10', '--data-root', str(root.parent)] if how == 'data-root' else \
        ['--dataset', str(root)]
    tiny = ['--model', 'convnet3', '--model-kwargs', 'width=4', '--epochs', '1', '--no-plots', '--cpu']
    assert train_cli.main(['-c', 'baseline', *data_args, '--real-ipc', '1', *tiny,
                           '--output', str(tmp_path / 'real')]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / 'real' / 'results.json').read_text())
    assert [r['test_count'] for r in result['runs']] == [20]  # the copy's test split: 2 images x 10 classes
    assert distill_cli.main(['distill', '-c', 'cifar10-ipc10-dm', *data_args, '--set', 'model_kwargs={width: 4}',
                             '--ipc', '1', '--iterations', '1', '--no-eval', '--output', str(tmp_path / 'd'),
                             '--cpu']) == 0, capsys.readouterr().err
    dset = timm_dd.load_distilled(str(tmp_path / 'd' / 'distilled'))
    assert dset.source_dataset == 'cifar10' and dset.class_names[:2] == ['airplane', 'automobile']
    assert str(root.parent) not in (tmp_path / 'd' / 'distilled' / 'README.md').read_text()  # no local path on a card
    from PIL import Image
    from timm_dd.distilled.grid import class_grid_image
    two_panels, layout = class_grid_image(dset, real=dset.images)  # the real images it started from, beside it
    assert Image.open(tmp_path / 'd' / 'distilled.png').size == two_panels.size and len(layout.panels) == 2
    train = ['-c', 'baseline', '--data', str(tmp_path / 'd' / 'distilled'), *tiny]
    capsys.readouterr()
    assert train_cli.main([*train, '--output', str(tmp_path / 'on-set')]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / 'on-set' / 'results.json').read_text())
    assert [r['test_count'] for r in result['runs']] == [20]  # found again: no --dataset / --data-root needed
    moved = root.rename(tmp_path / 'elsewhere')
    assert train_cli.main([*train, '--output', str(tmp_path / 'gone')]) == 2
    err = capsys.readouterr().err
    assert '--dataset' in err and '--data-root' in err and 'cifar10' in err
    assert 'no longer holds it' in err
    assert train_cli.main([*train, '--dataset', str(moved), '--output', str(tmp_path / 'moved')]) == 0


def test_resume_accepts_a_run_recorded_before_new_recipe_fields(tmp_path):
    from timm_dd.train.experiment import check_resume
    cfg = load_config('baseline', dict(epochs=2))
    record = {'config': cfg.to_dict(), 'data': {'kind': 'real'}, 'model_kwargs': {}}
    old = json.loads(json.dumps(record))
    for field in ('recompute_bn', 'eval_subset_per_class', 'lr_step_1999_quirk', 'soft_loss', 'soft_loss_t2',
                  'relabel', 'cutmix_beta'):
        del old['config'][field]  # fields added since (a run of the DP+KD table recorded before them resumes)
    old['config']['extra'] = {}  # a field older versions recorded
    (tmp_path / 'run_config.json').write_text(json.dumps(old))
    check_resume(tmp_path, record, resume=True)  # the same run: resumes
    changed = json.loads(json.dumps(record))
    changed['config']['recompute_bn'] = True
    with pytest.raises(ValueError, match='recompute_bn: None -> True'):
        check_resume(tmp_path, changed, resume=True)


def test_a_non_finite_loss_stops_the_run_before_its_checkpoint(tmp_path, accelerator):
    """The loss is read back once per epoch (no host sync per step); a non-finite one is an error naming the epoch
    and the images' range, raised before any hook sees the epoch, so no checkpoint holds the broken weights."""
    data = prepare_data(dataset='digits', real_ipc=1, image_size=8)
    train = ImageSet(data.train.images * 1e30, data.train.labels, num_classes=10)
    cfg = load_config('baseline', dict(epochs=3, eval_every=0, checkpoint_every=1, lr=0.01))
    model = create_student('convnet3', data, cfg, width=4)
    test = DataLoader(TensorDataset(data.test.images[:8], data.test.labels[:8]), batch_size=8)
    with pytest.raises(FloatingPointError, match=r'convnet3: loss became nan at epoch 0 .*images in \[.*e\+30'):
        train_model(model, train, test, cfg, accelerator, 'convnet3', out_dir=tmp_path, distributed=False)
    assert not (tmp_path / 'checkpoint.pt').exists()
