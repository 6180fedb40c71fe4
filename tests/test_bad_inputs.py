"""Every row of the bad-input table in docs/bad-inputs.md: the input, and the one clear error it gets (naming the
file or field and what to do), never a traceback from deep inside torch or a silent wrong result.

Each case returns the exception it expects and a regular expression its message must match; the table's ids and
the cases here must be the same set (tested), so the documentation cannot drift from the behaviour."""
import errno
import importlib.util
import json
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import timm_dd  # noqa: F401
from timm_dd.distill import ExpertConfig, ExpertFileError, ExpertPool, ExpertTrajectory, get_preset, save_trajectory
from timm_dd.distill.experts import train_experts
from timm_dd.distilled import DistilledSet

REPO = Path(__file__).resolve().parents[1]
CASES: Dict[str, Callable] = {}


def case(case_id: str):
    def register(fn):
        CASES[case_id] = fn
        return fn
    return register


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f'_{name}_cli', REPO / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _cli(name: str, argv, capsys) -> Tuple[int, str]:
    rc = _script(name)(argv)
    return rc, capsys.readouterr().err


def _set(tmp: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    dset = DistilledSet(images=torch.randn(20, 1, 8, 8, generator=g), labels=torch.arange(10).repeat_interleave(2),
                        class_names=[str(i) for i in range(10)], method='MTT', source_dataset='digits', ipc=2,
                        image_space='normalized', normalization={'mean': [0.5], 'std': [0.3]}, lr=0.01)
    return dset.save(tmp / 'set')


def _tamper(folder: Path, change) -> None:
    """Change the tensors of a saved set and keep its recorded checksum consistent (a valid file, bad content)."""
    import hashlib
    p = folder / 'distilled.safetensors'
    with safe_open(str(p), 'pt') as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(t)
    save_file(t, str(p), metadata=meta)
    cfg = json.loads((folder / 'distill_config.json').read_text())
    cfg['sha256']['distilled.safetensors'] = hashlib.sha256(p.read_bytes()).hexdigest()
    (folder / 'distill_config.json').write_text(json.dumps(cfg))


def _expert(tmp: Path, width: int = 4, zca: bool = False, name: str = 'buf') -> Tuple[Path, ExpertConfig]:
    kwargs = dict(num_classes=2, in_chans=1, img_size=8, width=width)
    model = timm.create_model('convnet3', **kwargs)
    th = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    cfg = ExpertConfig(arch='convnet3', model_kwargs=kwargs, epochs=3, zca=zca, dataset='digits')
    from dataclasses import asdict
    meta = dict(asdict(cfg), params=[[n, list(p.shape)] for n, p in model.named_parameters()], index=0)
    path = save_trajectory(tmp / name / 'expert_00000.safetensors', [th + 0.01 * k for k in range(4)], meta)
    return path, cfg


# --- distilled sets ------------------------------------------------------------------------------------------------

@case('set-missing-file')
def _(tmp, capsys):
    folder = _set(tmp)
    (folder / 'distilled.safetensors').unlink()
    return lambda: DistilledSet.load(folder), Exception, r'distilled\.safetensors'


@case('set-truncated')
def _(tmp, capsys):
    folder = _set(tmp)
    p = folder / 'distilled.safetensors'
    p.write_bytes(p.read_bytes()[:300])
    return lambda: DistilledSet.load(folder), Exception, r'distilled\.safetensors'


@case('set-flipped-byte')
def _(tmp, capsys):
    folder = _set(tmp)
    p = folder / 'distilled.safetensors'
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    return lambda: DistilledSet.load(folder), Exception, r'(?i)checksum|sha256'


@case('set-nan')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t['images'].__setitem__((0, 0, 0, 0), float('nan')))
    return lambda: DistilledSet.load(folder), Exception, r'(?i)nan'


@case('set-images-huge')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t['images'].mul_(1e30))
    return lambda: DistilledSet.load(folder), Exception, r'distilled.safetensors.*range over \[-.*e\+30'


@case('set-label-out-of-range')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t['labels'].__setitem__(3, 10))
    return lambda: DistilledSet.load(folder), Exception, r'(?i)label'


@case('set-negative-lr')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t.__setitem__('lr', torch.tensor(-0.01)))
    return lambda: DistilledSet.load(folder), Exception, r'(?i)\blr\b.*(positive|> ?0)|(positive|negative).*\blr\b'


@case('set-without-checksums')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t['images'].mul_(2))
    cfg = json.loads((folder / 'distill_config.json').read_text())
    del cfg['sha256']  # altered files, and the evidence removed
    (folder / 'distill_config.json').write_text(json.dumps(cfg))
    assert 'no sha256' in DistilledSet.load(folder).load_notes[0]  # without --strict: loads, with a note
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(folder), '--dataset', 'digits', '--strict',
                                   '--model', 'convnet3', '--output', str(tmp / 'o')], capsys)), 2, \
        r'distilled\.safetensors has no sha256 .*strict'


@case('set-labels-not-ipc')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t['labels'].__setitem__(t['labels'] == 9, 8))  # class 9 gone, class 8 doubled
    return lambda: DistilledSet.load(folder), Exception, r'labels do not match ipc=2 .*class 8 has 4, class 9 has 0'


@case('set-learned-lr-huge')
def _(tmp, capsys):
    folder = _set(tmp)
    _tamper(folder, lambda t: t.__setitem__('lr', torch.tensor(1e30)))
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(folder), '--dataset', 'digits', '--model',
                                   'convnet3', '--epochs', '3', '--output', str(tmp / 'o')], capsys)), 2, \
        r'learned lr 1e\+30 is outside \(0, 10\].*--lr'


@case('set-future-format')
def _(tmp, capsys):
    folder = _set(tmp)
    cfg = json.loads((folder / 'distill_config.json').read_text())
    cfg['format_version'] = 99
    (folder / 'distill_config.json').write_text(json.dumps(cfg))
    return lambda: DistilledSet.load(folder), Exception, r'(?i)version'


@case('set-missing-local-folder')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(tmp / 'nope'), '--model', 'convnet3',
                                   '--output', str(tmp / 'o')], capsys)), 2, r'no such folder'


@case('cifar-not-in-data-root')
def _(tmp, capsys):
    (tmp / 'empty').mkdir()
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'cifar10', '--data-root', str(tmp / 'empty'),
                                   '--real-ipc', '1', '--model', 'convnet3', '--output', str(tmp / 'o'), '--cpu'],
                         capsys)), 2, (r"neither torchvision's cifar-10-batches-py/ nor an image-folder/zip copy"
                                       r'.*--data-root DIR.*--dataset DIR')


@case('set-real-data-moved')
def _(tmp, capsys):
    import shutil
    folder = tmp / 'mydata'
    for split in ('train', 'test'):
        for k in range(10):
            (folder / split / f'class{k}').mkdir(parents=True)
            from PIL import Image
            Image.new('L', (8, 8), 10 * k).save(folder / split / f'class{k}' / '0.png')
    g = torch.Generator().manual_seed(0)
    DistilledSet(images=torch.randn(10, 1, 8, 8, generator=g), labels=torch.arange(10), method='DM',
                 class_names=[f'class{k}' for k in range(10)], source_dataset='mydata', ipc=1, image_space='pixel',
                 extra={'real_data': {'dataset': str(folder), 'root': None}}).save(tmp / 'set')
    shutil.rmtree(folder)
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(tmp / 'set'), '--model', 'convnet3',
                                   '--output', str(tmp / 'o'), '--cpu'], capsys)), 2, \
        r'no longer holds it.*pass --dataset NAME\|DIR\|ZIP .* or --data-root DIR'


# --- experts ---------------------------------------------------------------------------------------------------

@case('expert-truncated')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    path.write_bytes(path.read_bytes()[:200])
    return lambda: ExpertTrajectory(path), ExpertFileError, re.escape(str(path))


@case('expert-modified-epoch')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    with safe_open(str(path), 'pt') as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    t['epoch_0002'][0] += 1.0
    save_file(t, str(path), metadata=meta)
    return lambda: ExpertTrajectory(path).get(2), ExpertFileError, r'checksum'


@case('expert-nan')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    with safe_open(str(path), 'pt') as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    t['epoch_0001'][0] = float('nan')
    meta_d = json.loads(meta['timm_dd_expert'])
    meta_d.pop('checksums')  # an old file without checksums: the NaN itself must be caught
    save_file(t, str(path), metadata={'timm_dd_expert': json.dumps(meta_d)})
    return lambda: ExpertTrajectory(path).get(1), ExpertFileError, r'NaN.*expert_lr'


@case('expert-other-width')
def _(tmp, capsys):
    path, cfg = _expert(tmp, width=8)
    asked = ExpertConfig(**{**cfg.__dict__, 'model_kwargs': dict(cfg.model_kwargs, width=4)})
    return lambda: ExpertPool(path.parent, expected=asked), ExpertFileError, r'model_kwargs'


@case('expert-other-image-space')
def _(tmp, capsys):
    path, cfg = _expert(tmp, zca=True)
    asked = ExpertConfig(**{**cfg.__dict__, 'zca': False})
    return lambda: ExpertPool(path.parent, expected=asked), ExpertFileError, r'zca'


@case('experts-into-folder-of-other-experts')
def _(tmp, capsys):
    path, cfg = _expert(tmp)
    other = ExpertConfig(**{**cfg.__dict__, 'lr': 0.05})
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    return lambda: train_experts(x, y, path.parent, other), ExpertFileError, r'another recipe.*lr'


@case('expert-other-arch')
def _(tmp, capsys):
    path, cfg = _expert(tmp)
    asked = ExpertConfig(**{**cfg.__dict__, 'arch': 'resnet18_dd'})
    return lambda: ExpertPool(path.parent, expected=asked), ExpertFileError, r"arch: 'convnet3' \(experts\)"


@case('expert-other-data')
def _(tmp, capsys):
    path, cfg = _expert(tmp)
    asked = ExpertConfig(**{**cfg.__dict__, 'dataset': 'cifar10'})
    return lambda: ExpertPool(path.parent, expected=asked), ExpertFileError, r"another network or data.*dataset"


@case('expert-bogus-in-buffer')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    (path.parent / 'expert_00001.safetensors').write_bytes(b'not an expert trajectory')
    (path.parent / 'expert_00002.safetensors').write_bytes(path.read_bytes())
    return lambda: ExpertPool(path.parent), ExpertFileError, r'expert_00001\.safetensors'


@case('expert-missing-in-numbering')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    for i in (2, 3):  # expert_00001 was deleted (it diverged) and not trained again
        (path.parent / f'expert_0000{i}.safetensors').write_bytes(path.read_bytes())
    return lambda: ExpertPool(path.parent), ExpertFileError, r'missing from the numbering \(expert_00001.*experts'


@case('experts-being-written')
def _(tmp, capsys):
    from timm_dd.io import FolderLock
    path, _ = _expert(tmp)

    def distill_while_experts_train():
        with FolderLock(path.parent):  # what a running `distill.py experts` holds
            ExpertPool(path.parent)
    return distill_while_experts_train, ExpertFileError, r'being written by a running job \(pid \d+\).*max_experts'


@case('distill-output-is-experts')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    argv = ['distill', '-c', 'digits-ipc10-att', '--experts', str(path.parent), '--output', str(path.parent) + '/',
            '--cpu']
    return lambda: _cli('distill', argv, capsys), 2, r'--output .* is the experts folder.*choose another --output'


# --- checkpoints and resuming ----------------------------------------------------------------------------------

@case('train-checkpoint-corrupt')
def _(tmp, capsys):
    args = ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3', '--model-kwargs',
            'width=4', '--epochs', '2', '--output', str(tmp / 'o'), '--no-plots', '--cpu', '--keep-checkpoints']
    assert _cli('train', args, capsys)[0] == 0
    ckpt = tmp / 'o' / 'runs' / 'convnet3' / 'seed0' / 'checkpoint.pt'
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    (ckpt.parent / 'result.json').unlink()
    return (lambda: _cli('train', args + ['--resume'], capsys)), RuntimeError, re.escape(str(ckpt))


@case('distill-checkpoint-corrupt')
def _(tmp, capsys):
    from timm_dd.distill.state import load_checkpoint
    p = tmp / 'checkpoint.pt'
    p.write_bytes(b'not a checkpoint')
    return lambda: load_checkpoint(p), RuntimeError, re.escape(str(p))


@case('train-resume-other-recipe')
def _(tmp, capsys):
    args = ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3', '--model-kwargs',
            'width=4', '--output', str(tmp / 'o'), '--no-plots', '--cpu']
    assert _cli('train', args + ['--epochs', '2'], capsys)[0] == 0
    return (lambda: _cli('train', args + ['--epochs', '3', '--resume'], capsys)), 2, r'other settings.*epochs: 2 -> 3'


@case('distill-resume-other-settings')
def _(tmp, capsys):
    common = ['--preset', 'digits-ipc10-dm', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}', '--set',
              'ipc=1', '--iterations', '1', '--no-eval', '--output', str(tmp / 'd'), '--cpu']
    assert _cli('distill', ['distill', *common], capsys)[0] == 0
    return (lambda: _cli('distill', ['distill', *common, '--set', 'ipc=2', '--resume'], capsys)), 2, r'ipc: 1 -> 2'


@case('checkpoint-every-zero')
def _(tmp, capsys):
    from timm_dd.train.config import load_config
    return lambda: load_config('baseline', {'checkpoint_every': 0}), ValueError, r'checkpoint_every'


# --- names and values ------------------------------------------------------------------------------------------

@case('unknown-model')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'resnet9000',
                                   '--output', str(tmp / 'o'), '--cpu'], capsys)), 2, r"unknown model 'resnet9000'"


@case('model-kwargs-not-taken')
def _(tmp, capsys):
    args = ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--models', 'convnet3', 'resnet18_dd',
            '--model-kwargs', 'width=4', '--epochs', '1', '--output', str(tmp / 'o'), '--no-plots', '--cpu']
    return (lambda: _cli('train', args, capsys)), 2, r'resnet18_dd with --model-kwargs .*width'


@case('unknown-recipe')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'nosuchrecipe', '--model', 'convnet3'], capsys)), 2, r'nosuchrecipe.*not found'


@case('unknown-preset')
def _(tmp, capsys):
    return lambda: get_preset('cifar10-ipc7-mtt'), ValueError, r"unknown preset 'cifar10-ipc7-mtt'"


@case('unknown-set-key')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--model', 'convnet3', '--set', 'learning_rate=0.1'], capsys)), \
        2, r'unknown training config keys.*learning_rate'


@case('bad-set-value')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--model', 'convnet3', '--set', 'lr=fast'], capsys)), \
        2, r"lr='fast' is not a valid float"


@case('config-not-yaml')
def _(tmp, capsys):
    (tmp / 'my.yaml').write_text('epochs: [1\nlr: 0.1\n')
    return (lambda: _cli('train', ['-c', str(tmp / 'my.yaml'), '--model', 'convnet3'], capsys)), \
        2, r'my\.yaml is not valid YAML: .*line 1'


@case('set-list-syntax')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--model', 'convnet3', '--set', 'lr_milestones=500'], capsys)), \
        2, r"lr_milestones=500 is not a valid List\[int\].*--set key=\[1, 2\]"


@case('data-is-run-folder')
def _(tmp, capsys):
    run = tmp / 'run'
    run.mkdir()
    for name in ('distilled', 'distilled_ema'):
        _set(tmp).rename(run / name)
    (run / 'grids').mkdir()
    argv = ['--data', str(run), '--model', 'convnet3', '--epochs', '1', '--cpu', '--output', str(tmp / 'o')]
    return (lambda: _cli('train', argv, capsys)), 2, \
        r'not a distilled set but holds some: pass one of .*run/distilled, '


@case('nan-training-images')
def _(tmp, capsys):
    from timm_dd.data import ImageSet
    x = torch.randn(4, 1, 8, 8)
    x[0, 0, 0, 0] = float('inf')
    return lambda: ImageSet(x, torch.arange(4), num_classes=4), ValueError, r'NaN or Inf'


@case('teacher-other-channels')
def _(tmp, capsys):
    from timm_dd.hub import save_teacher
    teacher = timm.create_model('convnet3', num_classes=10, in_chans=3, width=4)
    folder = save_teacher(teacher, tmp / 'teacher', model_args=dict(num_classes=10, in_chans=3, width=4))
    return (lambda: _cli('train', ['-c', 'dpkd', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                                   '--model-kwargs', 'width=4', '--epochs', '1', '--teacher', str(folder),
                                   '--output', str(tmp / 'o'), '--no-plots', '--cpu'], capsys)), \
        2, r'teacher .*teacher cannot take the training images \(1x'


# --- data ------------------------------------------------------------------------------------------------------

@case('missing-dataset-path')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', str(tmp / 'nodata'), '--real-ipc', '1',
                                   '--model', 'convnet3', '--output', str(tmp / 'o'), '--cpu'], capsys)), \
        2, re.escape(str(tmp / 'nodata'))


@case('zip-not-an-image-folder')
def _(tmp, capsys):
    from timm_dd.data import load_dataset
    path = tmp / 'train.zip'
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('notes.txt', 'hello')
    return lambda: load_dataset(str(path), 'train', cache_dir=tmp / 'c'), (ValueError, FileNotFoundError), \
        r'(?i)(no|not an?) .*(class|image)'


@case('empty-folder')
def _(tmp, capsys):
    from timm_dd.data import load_dataset
    (tmp / 'empty').mkdir()
    return lambda: load_dataset(str(tmp / 'empty'), 'train', cache_dir=tmp / 'c'), (ValueError, FileNotFoundError), \
        re.escape(str(tmp / 'empty'))


# --- the file system and the Hub -----------------------------------------------------------------------------------

@case('output-not-writable')
def _(tmp, capsys):
    from timm_dd.io import atomic_write_json
    return lambda: atomic_write_json('/proc/self/timm_dd_results.json', {}), OSError, r'cannot write .*writable'


@case('disk-full')
def _(tmp, capsys):
    from timm_dd.io import atomic_write
    target = tmp / 'state.pt'
    target.write_bytes(b'previous good state')

    class FullDisk:  # what a full device does to a write: ENOSPC
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, 'No space left on device')

    def write():
        with atomic_write(target) as f:
            torch.save({'x': torch.zeros(10)}, FullDisk(f))

    def check():
        try:
            write()
        finally:
            assert target.read_bytes() == b'previous good state'  # the previous good state stays loadable
            assert [p.name for p in tmp.iterdir()] == ['state.pt']  # no half-written file left
    return check, OSError, r'no space left .*state\.pt.*previous version'


@case('offline-empty-cache')
def _(tmp, capsys):
    pytest.importorskip('huggingface_hub')
    import huggingface_hub.constants as hc
    from timm_dd.hub import HubError, load_distilled
    old = hc.HF_HUB_OFFLINE, hc.HF_HUB_CACHE

    def run():
        hc.HF_HUB_OFFLINE, hc.HF_HUB_CACHE = True, str(tmp / 'hub')
        try:
            load_distilled('org/never-downloaded', cache_dir=tmp / 'hub')
        finally:
            hc.HF_HUB_OFFLINE, hc.HF_HUB_CACHE = old
    return run, HubError, r'HF_HUB_OFFLINE=1.*not in the local cache|not in the local cache.*HF_HUB_OFFLINE=1'


@case('output-folder-in-use')
def _(tmp, capsys):
    from timm_dd.io import FolderInUseError, FolderLock
    lock = FolderLock(tmp / 'o').__enter__()

    def run():
        try:
            with FolderLock(tmp / 'o'):
                pass
        finally:
            lock.__exit__(None, None, None)
    return run, FolderInUseError, r'in use by a running job \(pid \d+\)'


@case('save-over-user-files')
def _(tmp, capsys):
    folder = _set(tmp)
    (folder / 'notes.txt').write_text('mine')
    dset = DistilledSet.load(folder)

    def run():
        try:
            dset.save(folder)
        finally:
            assert (folder / 'notes.txt').read_text() == 'mine'
    return run, FileExistsError, r'not part of a distilled set \(notes\.txt\).*choose a new or empty folder'


@case('field-out-of-range')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'digits', '--model', 'convnet3', '--set',
                                   'epochs=99999999999999999999999', '--output', str(tmp / 'o')], capsys)), 2, \
        r'epochs=99999999999999999999999 is outside its range \[1, 1e6\].*docs/config-ranges\.md'


@case('preset-field-out-of-range')
def _(tmp, capsys):
    return (lambda: _cli('distill', ['distill', '-c', 'digits-ipc10-att', '--set', 'img_momentum=1.5', '--output',
                                     str(tmp / 'o')], capsys)), 2, r'img_momentum=1\.5 is outside its range \[0, 1\)'


@case('lr-img-negative')
def _(tmp, capsys):
    return (lambda: _cli('distill', ['distill', '-c', 'digits-ipc10-att', '--set', 'lr_img=-1', '--output',
                                     str(tmp / 'o')], capsys)), 2, r'lr_img=-1(\.0)? is outside its range \(0, 1e9\]'


@case('experts-count-or-lr-out-of-range')
def _(tmp, capsys):
    def three_commands():
        results = [_cli('distill', ['experts', '-c', 'digits-ipc10-att', '--set', change, '--output',
                                    str(tmp / 'o')], capsys) for change in ('num_experts=0', f'num_experts={10**30}',
                                                                            'expert_lr=nan')]
        return max(rc for rc, _ in results), ' | '.join(err.strip() for _, err in results)
    return three_commands, 2, (r'num_experts=0 is outside its range \[1, 1e6\].* \| .*num_experts=10{30} is '
                               r'outside.* \| .*expert_lr=nan is outside its range \(0, 10\]')


@case('convert-lr-negative')
def _(tmp, capsys):
    src = tmp / 'mtt'
    src.mkdir()
    torch.save(torch.randn(20, 1, 8, 8), src / 'images_best.pt')
    torch.save(torch.arange(10).repeat_interleave(2), src / 'labels_best.pt')
    argv = ['convert', str(src), '--layout', 'mtt', '--dataset', 'digits', '--image-space', 'normalized', '--lr',
            '-0.5', '--output', str(tmp / 'out')]
    return lambda: _cli('distill', argv, capsys), 2, r'lr=-0\.5: must be a positive number'


@case('real-ipc-negative')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '-5', '--model', 'convnet3',
                                   '--output', str(tmp / 'o')], capsys)), 2, r'real_ipc .*-1 for all of them; got -5'


@case('seeds-repeated')
def _(tmp, capsys):
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                                   '--seeds', '0', '0', '--output', str(tmp / 'o')], capsys)), 2, \
        r'seeds \[0, 0\] repeat 0: each one is one run'


@case('data-broken-symlink')
def _(tmp, capsys):
    (tmp / 'loop').symlink_to('loop')  # a link to itself: a local path, never a Hub repo id to look up
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(tmp / 'loop'), '--model', 'convnet3',
                                   '--output', str(tmp / 'o')], capsys)), 2, r'is a symbolic link to .*loop of links'


def _image_tree(folder: Path, classes: int = 10) -> Path:
    from PIL import Image
    for k in range(classes):
        (folder / f'class{k}').mkdir(parents=True)
        Image.new('L', (8, 8), 10 * k).save(folder / f'class{k}' / '0.png')
    return folder


@case('folder-link-loop')
def _(tmp, capsys):
    folder = _image_tree(tmp / 'pngs')
    (folder / 'class3' / 'up').symlink_to('..')  # followed, this would walk the set again, 40 levels deep
    return (lambda: _cli('distill', ['convert', str(folder), '--layout', 'folder', '--dataset', 'digits',
                                     '--output', str(tmp / 'o')], capsys)), 2, \
        r'class3/up is a link to .*pngs, a folder that contains it: following it would never end; remove the link'


@case('folder-class-linked-twice')
def _(tmp, capsys):
    folder = _image_tree(tmp / 'pngs')
    (folder / 'class3' / 'more').symlink_to('../class4')  # class4's images would also count as class3's
    return (lambda: _cli('distill', ['convert', str(folder), '--layout', 'folder', '--dataset', 'digits',
                                     '--output', str(tmp / 'o')], capsys)), 2, \
        (r"class3/more is a link to .*class4, a folder already read \(as .*class4\): following it would read "
         r"its files twice")


@case('folder-broken-link')
def _(tmp, capsys):
    folder = _image_tree(tmp / 'pngs')
    (folder / 'class3' / '1.png').symlink_to(tmp / 'moved-away.png')
    return (lambda: _cli('distill', ['convert', str(folder), '--layout', 'folder', '--dataset', 'digits',
                                     '--output', str(tmp / 'o')], capsys)), 2, \
        r'class3/1.png is a broken link \(to .*moved-away.png\)'


@case('data-is-expert-buffer')
def _(tmp, capsys):
    path, _ = _expert(tmp)
    return (lambda: _cli('train', ['-c', 'baseline', '--data', str(path.parent), '--dataset', 'digits', '--model',
                                   'convnet3', '--output', str(tmp / 'o')], capsys)), 2, \
        r'holds expert trajectories .*not a distilled set: pass it to `distill.py distill --experts`'


@case('data-root-zip-not-a-zip')
def _(tmp, capsys):
    (tmp / 'cifar').mkdir()
    for split in ('train', 'test'):
        (tmp / 'cifar' / f'{split}.zip').write_text('not a zip')
    return (lambda: _cli('train', ['-c', 'baseline', '--dataset', 'cifar10', '--data-root', str(tmp / 'cifar'),
                                   '--real-ipc', '1', '--model', 'convnet3', '--output', str(tmp / 'o')], capsys)), \
        2, r'train\.zip is not a zip archive \(the train split of'


@case('hub-retries-not-a-number')
def _(tmp, capsys):
    import os
    os.environ['TIMM_DD_HUB_RETRIES'] = 'abc'  # test_bad_input's monkeypatch does not see it: undone below

    def run():
        try:
            return _cli('train', ['-c', 'baseline', '--data', 'org/some-set', '--model', 'convnet3', '--output',
                                  str(tmp / 'o')], capsys)
        finally:
            del os.environ['TIMM_DD_HUB_RETRIES']
    return run, 2, r"TIMM_DD_HUB_RETRIES='abc' is not a whole number of attempts >= 1"


# --- the table and the cases agree -----------------------------------------------------------------------------

def _table_ids():
    text = (REPO / 'docs' / 'bad-inputs.md').read_text()
    return [m.group(1) for m in re.finditer(r'^\| `([a-z0-9-]+)` \|', text, flags=re.M)]


def test_table_and_cases_agree():
    ids = _table_ids()
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert set(ids) == set(CASES)
    readme = (REPO / 'README.md').read_text()
    assert f'[docs/bad-inputs.md](docs/bad-inputs.md) ({len(ids)} cases' in ' '.join(readme.split()), 'README count'


@pytest.mark.parametrize('case_id', sorted(CASES))
def test_bad_input(case_id, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    torch.set_num_threads(1)
    action, expected, pattern = CASES[case_id](tmp_path, capsys)
    if isinstance(expected, int):  # a command line: exit status and one line on stderr
        rc, err = action()
        assert rc == expected, err
        assert 'Traceback' not in err and re.search(pattern, err), err
        return
    with pytest.raises(expected) as info:
        action()
    assert re.search(pattern, str(info.value)), str(info.value)


def test_every_numeric_field_has_a_range_and_the_docs_list_them():
    """docs/config-ranges.md and the code's range tables name the same fields and intervals, and no int or float
    field of a recipe or preset is left without one."""
    import dataclasses
    import typing

    from timm_dd.distill.presets import DISTILL_RANGES, DistillConfig
    from timm_dd.train.config import TRAIN_RANGES, TrainConfig
    text = (REPO / 'docs' / 'config-ranges.md').read_text()
    train_part, distill_part = text.split('(`DistillConfig`)')
    for cls, ranges, part in ((TrainConfig, TRAIN_RANGES, train_part), (DistillConfig, DISTILL_RANGES, distill_part)):
        listed = dict(re.findall(r'^\| `(\w+)` \| `([^`]+)` \|', part, flags=re.M))
        hints = typing.get_type_hints(cls)
        numeric = {f.name for f in dataclasses.fields(cls) if re.search(r'\b(int|float)\b', str(hints[f.name]))}
        numeric |= {f.name for f in dataclasses.fields(cls) if hints[f.name] in (int, float)}
        assert numeric == set(ranges), (cls.__name__, numeric ^ set(ranges))
        for name, interval in ranges.items():
            assert listed.get(name) == interval, (name, listed.get(name), interval)


@pytest.mark.parametrize('interval,inside,outside', [('[1, 1e6]', [1, 1e6], [0, 1e6 + 1, float('nan')]),
                                                      ('(0, 10]', [1e-9, 10], [0, -1, 10.5]),
                                                      ('[0, 1)', [0, 0.999], [1, -1e-9])])
def test_check_ranges_includes_and_excludes_the_bounds(interval, inside, outside):
    from types import SimpleNamespace

    from timm_dd.fields import check_ranges
    for x in inside:
        check_ranges(SimpleNamespace(v=x), {'v': interval}, 'here')
    for x in outside:
        with pytest.raises(ValueError, match=r'v=.* is outside its range'):
            check_ranges(SimpleNamespace(v=x), {'v': interval}, 'here')
