"""DistilledSet: folder format round trip, validation of damaged sets, atomic saves, pixel mapping, grids."""
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import timm_dd
from timm_dd.data.zca import ZCA
from timm_dd.distilled import (
    CARD_FILE, CONFIG_FILE, DISTILLED_FILE, FORMAT_NAME, FORMAT_VERSION, ZCA_FILE, DistilledSet, DistilledSetError,
    save_grid,
)
from timm_dd.distilled import distilled_set as ds_mod

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
K, IPC, C, H, W = 4, 3, 3, 4, 4


def _pixels(seed=0, n=K * IPC):
    return torch.rand(n, C, H, W, generator=torch.Generator().manual_seed(seed))


def _labels():
    return torch.arange(K).repeat_interleave(IPC)


def _full_set(dtype=torch.float32):
    """Every optional field set: ZCA (on normalized pixels), soft probs, learned lr, metadata."""
    g = torch.Generator().manual_seed(1)
    norm = (_pixels(2, 50) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    zca = ZCA.fit(norm, eps=0.1)
    probs = torch.softmax(torch.randn(K * IPC, K, generator=g), 1)
    return DistilledSet(
        images=torch.randn(K * IPC, C, H, W, generator=g).to(dtype), labels=_labels(), method='MTT',
        source_dataset='cifar10', class_names=['cat', 'dog', 'ship', 'car'], ipc=IPC, image_space='zca',
        normalization={'mean': MEAN, 'std': STD}, soft_labels=probs, soft_label_kind='probs',
        soft_label_temperature=4.0, lr=torch.tensor(0.0123), zca=zca, distill_arch='convnet3', seed=7,
        license='mit', eval_results=[{'arch': 'convnet3', 'top1_mean': 65.4, 'top1_std': 0.7, 'num_eval': 5,
                                      'protocol': 'dsa'}],
        extra={'syn_steps': 20, 'expert_epochs': 2, 'lr_img': 1000.0, 'dsa': True},
    )


def _simple_set(**kw):
    args = dict(images=(_pixels() - 0.5) / 0.25, labels=_labels(), method='DM', source_dataset='cifar10',
                normalization={'mean': [0.5] * 3, 'std': [0.25] * 3})
    args.update(kw)
    return DistilledSet(**args)


_META = ('method', 'source_dataset', 'num_classes', 'class_names', 'ipc', 'image_space', 'normalization',
         'soft_label_kind', 'soft_label_temperature', 'distill_arch', 'seed', 'license', 'library_version',
         'eval_results', 'extra')


def _assert_same(a, b):
    for name in ('images', 'labels', 'soft_labels', 'lr'):
        ta, tb = getattr(a, name), getattr(b, name)
        if ta is None:
            assert tb is None, name
            continue
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, name
        # bit-identical, NaN-safe and dtype-agnostic
        assert torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)), name
    for name in _META:
        assert getattr(a, name) == getattr(b, name), name
    assert (a.zca is None) == (b.zca is None)
    if a.zca is not None:
        assert a.zca.eps == b.zca.eps
        for k, v in a.zca.state_dict().items():
            assert torch.equal(v, b.zca.state_dict()[k]), k


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_full(tmp_path, dtype):
    dset = _full_set(dtype)
    out = dset.save(tmp_path / 'set')
    assert out == tmp_path / 'set'
    assert sorted(os.listdir(out)) == sorted([DISTILLED_FILE, CONFIG_FILE, CARD_FILE, ZCA_FILE])
    back = DistilledSet.load(out)
    _assert_same(dset, back)
    assert back.images.dtype == dtype and back.lr.shape == () and back.lr.dtype == torch.float32
    assert (back.num_classes, back.num_images, back.image_shape, back.image_size) == (K, K * IPC, (C, H, W), (H, W))
    assert repr(back).startswith("DistilledSet(method='MTT'") and len(repr(back)) < 300
    _assert_same(dset, DistilledSet.load(str(out)))

    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg['format'] == FORMAT_NAME and cfg['format_version'] == FORMAT_VERSION
    assert cfg['library_version'] == timm_dd.__version__
    assert cfg['zca'] == {'eps': 0.1, 'file': ZCA_FILE}
    assert cfg['label_type'] == 'soft' and cfg['learned_lr'] is True and cfg['image_size'] == [C, H, W]
    assert cfg['num_images'] == K * IPC and cfg['eval'][0]['arch'] == 'convnet3'
    tensors = load_file(out / DISTILLED_FILE)
    assert set(tensors) == {'images', 'labels', 'soft_labels', 'lr'}
    assert tensors['labels'].dtype == torch.int64


def test_round_trip_minimal_and_inference(tmp_path):
    dset = DistilledSet(_pixels(), _labels().int())
    assert dset.labels.dtype == torch.int64
    assert (dset.image_space, dset.num_classes, dset.ipc, dset.label_type) == ('pixel', K, IPC, 'hard')
    back = DistilledSet.load(dset.save(tmp_path / 'min'))
    _assert_same(dset, back)
    assert back.soft_labels is None and back.lr is None and back.zca is None
    unbalanced = DistilledSet(_pixels()[:5], torch.tensor([0, 0, 1, 2, 3]), lr=0.01)
    assert unbalanced.ipc is None and unbalanced.lr.dtype == torch.float32


def test_card(tmp_path):
    out = _full_set().save(tmp_path / 'set', repo_id='dd-org/cifar10-mtt-ipc3')
    text = (out / CARD_FILE).read_text()
    header = yaml.safe_load(text.split('---')[1])
    assert set(header) == {'license', 'pretty_name', 'task_categories', 'tags', 'size_categories', 'source_datasets'}
    assert header['task_categories'] == ['image-classification'] and header['source_datasets'] == ['cifar10']
    assert header['tags'] == ['dataset-distillation', 'distilled', 'timm_dd', 'ipc-3', 'cifar10']
    assert header['size_categories'] == ['n<1K'] and header['license'] == 'mit'
    assert "import timm_dd\ndset = timm_dd.load_distilled('dd-org/cifar10-mtt-ipc3')" in text
    assert '| convnet3 | 65.4 | 0.7 | 5 | dsa |' in text


# damaged sets: each must fail with DistilledSetError naming the file and the problem

def _rewrite_tensors(path, **changes):
    tensors = load_file(path)
    for k, v in changes.items():
        if v is None:
            del tensors[k]
        else:
            tensors[k] = v
    save_file(tensors, path, metadata={'format': FORMAT_NAME, 'format_version': str(FORMAT_VERSION)})


def _edit_config(folder, **changes):
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))


@pytest.fixture
def saved(tmp_path):
    return _full_set().save(tmp_path / 'set')


def _expect(folder, file, pattern):
    with pytest.raises(DistilledSetError) as info:
        DistilledSet.load(folder)
    msg = str(info.value)
    if file is not None:
        assert file in msg, msg
    assert re.search(pattern, msg), msg
    return info.value


def test_missing_folder_and_files(saved, tmp_path):
    _expect(tmp_path / 'nope', 'nope', 'folder not found')
    os.remove(saved / ZCA_FILE)
    _expect(saved, ZCA_FILE, 'file not found')
    os.remove(saved / DISTILLED_FILE)
    _expect(saved, DISTILLED_FILE, 'file not found')
    os.remove(saved / CONFIG_FILE)
    _expect(saved, CONFIG_FILE, 'file not found')


def test_truncated_safetensors(saved):
    path = saved / DISTILLED_FILE
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _expect(saved, DISTILLED_FILE, 'truncated or corrupt')
    path.write_bytes(data[:5])
    _expect(saved, DISTILLED_FILE, 'truncated or corrupt')


def test_flipped_bytes(saved):
    path = saved / DISTILLED_FILE
    data = bytearray(path.read_bytes())
    header = bytearray(data)
    header[10] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(header))
    _expect(saved, DISTILLED_FILE, 'truncated or corrupt')
    body = bytearray(data)
    body[-3] ^= 0x01  # last tensor's data: a silent change only the checksum sees
    path.write_bytes(bytes(body))
    _expect(saved, DISTILLED_FILE, 'sha256')
    DistilledSet.load(saved, verify=False)
    path.write_bytes(bytes(data))
    zca = saved / ZCA_FILE
    zdata = bytearray(zca.read_bytes())
    zdata[-1] ^= 0x01
    zca.write_bytes(bytes(zdata))
    with pytest.raises(DistilledSetError, match=ZCA_FILE):
        DistilledSet.load(saved)


@pytest.mark.parametrize('key', ['images', 'labels', 'soft_labels', 'lr'])
def test_missing_key(saved, key):
    _rewrite_tensors(saved / DISTILLED_FILE, **{key: None})
    _expect(saved, DISTILLED_FILE, f"missing tensor '{key}'")


def test_missing_zca_key(saved):
    _rewrite_tensors(saved / ZCA_FILE, transform_inv=None)
    _expect(saved, ZCA_FILE, 'transform_inv')


def test_config_disagrees_with_tensors(saved):
    _edit_config(saved, label_type='hard')
    _expect(saved, DISTILLED_FILE, 'label_type hard')
    _edit_config(saved, label_type='soft', learned_lr=False)
    _expect(saved, DISTILLED_FILE, 'learned_lr false')
    _edit_config(saved, learned_lr=True, num_images=5)
    _expect(saved, DISTILLED_FILE, 'num_images 5')
    _edit_config(saved, num_images=K * IPC, num_classes=3, class_names=None)
    _expect(saved, DISTILLED_FILE, r'\[0, 3\)')


def test_bad_json(saved):
    (saved / CONFIG_FILE).write_text('{"format": "timm_dd.distilled", ')
    _expect(saved, CONFIG_FILE, 'not valid JSON')
    (saved / CONFIG_FILE).write_text('[1, 2]')
    _expect(saved, CONFIG_FILE, 'JSON object')


def test_unknown_format(saved):
    _edit_config(saved, format_version=FORMAT_VERSION + 1)
    _expect(saved, CONFIG_FILE, f'format_version {FORMAT_VERSION + 1} is newer')
    _edit_config(saved, format_version='1')
    _expect(saved, CONFIG_FILE, 'invalid format_version')
    _edit_config(saved, format_version=FORMAT_VERSION, format='something.else')
    _expect(saved, CONFIG_FILE, 'unknown format')


def test_config_missing_key(saved):
    cfg = json.loads((saved / CONFIG_FILE).read_text())
    del cfg['image_space']
    (saved / CONFIG_FILE).write_text(json.dumps(cfg))
    _expect(saved, CONFIG_FILE, 'missing keys')


def test_shape_mismatches(saved):
    path = saved / DISTILLED_FILE
    good = load_file(path)
    _rewrite_tensors(path, labels=good['labels'][:-1])
    _expect(saved, DISTILLED_FILE, r'labels must have shape \[12\]')
    _rewrite_tensors(path, labels=good['labels'], soft_labels=good['soft_labels'][:-2])
    _expect(saved, DISTILLED_FILE, 'soft_labels must have shape')
    _rewrite_tensors(path, soft_labels=good['soft_labels'])
    _edit_config(saved, image_size=[3, 8, 8])
    _expect(saved, DISTILLED_FILE, 'image_size')
    _edit_config(saved, image_size=[C, H, W])
    _rewrite_tensors(saved / ZCA_FILE, transform_matrix=torch.eye(10))
    _expect(saved, ZCA_FILE, 'transform_matrix has shape')


def test_bad_values(saved):
    path = saved / DISTILLED_FILE
    good = load_file(path)
    nan = good['images'].clone()
    nan[0, 0, 0, 0] = float('nan')
    _rewrite_tensors(path, images=nan)
    _expect(saved, DISTILLED_FILE, 'images contain NaN or Inf')
    inf = good['soft_labels'].clone()
    inf[1, 1] = float('inf')
    _rewrite_tensors(path, images=good['images'], soft_labels=inf)
    _expect(saved, DISTILLED_FILE, 'soft_labels contain NaN or Inf')
    out = good['labels'].clone()
    out[0] = K
    _rewrite_tensors(path, soft_labels=good['soft_labels'], labels=out)
    _expect(saved, DISTILLED_FILE, r'labels must lie in \[0, 4\)')
    out[0] = -1
    _rewrite_tensors(path, labels=out)
    _expect(saved, DISTILLED_FILE, r'labels must lie in \[0, 4\)')
    _rewrite_tensors(path, labels=good['labels'].float())
    _expect(saved, DISTILLED_FILE, 'int64')
    _rewrite_tensors(path, labels=good['labels'], lr=torch.tensor(-0.01))
    _expect(saved, DISTILLED_FILE, 'lr must be positive')
    _rewrite_tensors(path, lr=torch.tensor(float('nan')))
    _expect(saved, DISTILLED_FILE, 'lr is NaN')


def test_invalid_sets_cannot_be_built(tmp_path):
    img = _pixels()
    with pytest.raises(DistilledSetError, match='NaN'):
        DistilledSet(img.masked_fill(img > 0.99, float('nan')), _labels())
    with pytest.raises(DistilledSetError, match='lie in'):
        DistilledSet(img, _labels(), class_names=['a', 'b'])
    with pytest.raises(DistilledSetError, match='one per image'):
        DistilledSet(img, _labels()[:3])
    with pytest.raises(DistilledSetError, match='lr must be positive'):
        DistilledSet(img, _labels(), lr=0.0)
    with pytest.raises(DistilledSetError, match='normalization'):
        DistilledSet(img, _labels(), image_space='normalized')
    with pytest.raises(DistilledSetError, match='ZCA has 12 features'):
        DistilledSet(img, _labels(), zca=ZCA.fit(torch.rand(10, 3, 2, 2)))
    with pytest.raises(DistilledSetError, match='4-D'):
        DistilledSet(img[0], _labels())
    with pytest.raises(DistilledSetError, match='probs'):
        DistilledSet(img, _labels(), soft_labels=-torch.ones(K * IPC, K), soft_label_kind='probs')
    with pytest.raises(DistilledSetError, match='JSON'):
        DistilledSet(img, _labels(), extra={'x': float('nan')})
    assert issubclass(DistilledSetError, ValueError)
    # a set broken after construction is refused by save, and nothing is written
    dset = _simple_set()
    dset.images[0, 0, 0, 0] = float('inf')
    with pytest.raises(DistilledSetError, match='NaN or Inf'):
        dset.save(tmp_path / 'bad')
    assert os.listdir(tmp_path) == []


# atomic saves

def test_failed_save_keeps_previous_set(tmp_path, monkeypatch):
    good = _simple_set(method='DM')
    folder = good.save(tmp_path / 'set')

    def boom(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(ds_mod, 'render_card', boom)  # tensors and config written, card not
    with pytest.raises(OSError, match='disk full'):
        _full_set().save(folder)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['set']  # no temporary or aside folders left
    _assert_same(good, DistilledSet.load(folder))

    # failing while moving the new folder into place restores the old one
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError('rename failed')
        return real_replace(src, dst)

    monkeypatch.setattr(ds_mod.os, 'replace', flaky_replace)
    with pytest.raises(OSError, match='rename failed'):
        _full_set().save(folder)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['set']
    _assert_same(good, DistilledSet.load(folder))

    # a failed first save leaves nothing behind
    monkeypatch.setattr(ds_mod, 'render_card', boom)
    with pytest.raises(OSError):
        good.save(tmp_path / 'new')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['set']


def test_overwrite(tmp_path):
    folder = _simple_set().save(tmp_path / 'set')
    full = _full_set()
    full.save(folder)
    _assert_same(full, DistilledSet.load(folder))
    assert os.listdir(tmp_path) == ['set']
    with pytest.raises(FileExistsError):
        full.save(folder, overwrite=False)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'precious.txt').write_text('x')
    with pytest.raises(FileExistsError, match=r'not part of a distilled set \(precious.txt\)'):
        full.save(other)
    assert (other / 'precious.txt').exists()
    (folder / 'precious.txt').write_text('x')  # a user's file beside a saved set is not lost either
    with pytest.raises(FileExistsError, match='precious.txt'):
        full.save(folder)
    assert (folder / 'precious.txt').read_text() == 'x'
    _assert_same(full, DistilledSet.load(folder))
    (tmp_path / 'empty').mkdir()
    full.save(tmp_path / 'empty')
    DistilledSet.load(tmp_path / 'empty')


# pixel space and grids

def test_space_is_one_stored_value_given_whole_or_as_parts(tmp_path):
    from timm_dd.data import ImageSpace
    p = _pixels()
    space = ImageSpace.normalized(MEAN, STD)
    whole = DistilledSet(space.to_model(p), _labels(), space=space)
    parts = DistilledSet(space.to_model(p), _labels(), normalization={'mean': MEAN, 'std': STD})
    assert whole.space == parts.space == space
    assert (parts.image_space, parts.normalization, parts.zca) == ('normalized', {'mean': MEAN, 'std': STD}, None)
    with pytest.raises(AttributeError):  # views of the one value, not a second copy to get out of step
        parts.image_space = 'pixel'
    with pytest.raises(DistilledSetError, match='not both'):
        DistilledSet(p, _labels(), space=space, image_space='normalized')
    with pytest.raises(DistilledSetError, match='one per channel'):
        DistilledSet(p, _labels(), space=ImageSpace.normalized([0.5], [0.2]))
    folder = whole.save(tmp_path / 'set')
    assert DistilledSet.load(folder).space == space


def test_to_pixel_space():
    p = _pixels()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    dset = DistilledSet((p - mean) / std, _labels(), normalization={'mean': MEAN, 'std': STD})
    assert dset.image_space == 'normalized'
    torch.testing.assert_close(dset.to_pixel_space(), p, atol=1e-6, rtol=0)
    zca = ZCA.fit(_pixels(3, 100))
    dset = DistilledSet(zca.transform(p), _labels(), zca=zca)
    assert dset.image_space == 'zca'
    torch.testing.assert_close(dset.to_pixel_space(), p, atol=1e-4, rtol=0)
    # ZCA of normalized pixels: inverse ZCA, then de-normalize
    zca = ZCA.fit((_pixels(3, 100) - mean) / std)
    dset = DistilledSet(zca.transform((p - mean) / std), _labels(), zca=zca, normalization={'mean': MEAN, 'std': STD})
    torch.testing.assert_close(dset.to_pixel_space(), p, atol=1e-4, rtol=0)
    torch.testing.assert_close(dset.to_pixel_space(dset.images[:2].half()), p[:2], atol=2e-2, rtol=0)
    dset = DistilledSet(p, _labels())
    assert torch.equal(dset.to_pixel_space(), p)


def test_save_grid(tmp_path):
    p = _pixels()
    dset = _simple_set(images=(p - 0.5) / 0.25)
    path = save_grid(dset, tmp_path / 'grids' / 'grid.png', padding=2, scale=1, labels=False)  # the bare grid
    assert path == tmp_path / 'grids' / 'grid.png' and os.listdir(path.parent) == ['grid.png']
    img = Image.open(path)
    assert img.format == 'PNG' and img.mode == 'RGB'
    assert img.size == (IPC * (W + 2) + 2, K * (H + 2) + 2)  # one row per class
    arr = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    # row of class 1, first column == the first image of class 1
    cell = arr[:, 2 + (H + 2):2 + (H + 2) + H, 2:2 + W]
    assert (cell.float() - p[IPC] * 255).abs().max() <= 1
    # out-of-range values are clipped, more columns than images leave blank cells, scale upsamples
    wild = DistilledSet(torch.randn(K * IPC, C, H, W) * 5, _labels())
    img = Image.open(save_grid(wild, tmp_path / 'wild.png', max_per_class=5, padding=0, scale=2, classes=[0, 2],
                               labels=False))
    assert img.size == (IPC * W * 2, 2 * H * 2)
    img = Image.open(save_grid(_full_set(), tmp_path / 'zca.png', max_per_class=2, scale=1, labels=False))
    assert img.size == (2 * (W + 2) + 2, K * (H + 2) + 2)
    # by default: upscaled to >= 64 px per image, with the class names in a column before the rows
    img = Image.open(save_grid(dset, tmp_path / 'default.png'))
    scale = -(-64 // min(H, W))
    assert img.size[0] > IPC * (W * scale + 2) + 2 and img.size[1] >= K * (H * scale + 2) + 2
