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


# --- the table and the cases agree -----------------------------------------------------------------------------

def _table_ids():
    text = (REPO / 'docs' / 'bad-inputs.md').read_text()
    return [m.group(1) for m in re.finditer(r'^\| `([a-z0-9-]+)` \|', text, flags=re.M)]


def test_table_and_cases_agree():
    ids = _table_ids()
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert set(ids) == set(CASES)


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
