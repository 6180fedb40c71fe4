"""MTT's ImageNet subsets read from folders: fast.ai's release and ImageNet-1K's 1,000 wnid folders, MTT's label order
(not the sorted one), the 128x128 stretch, the cache of just the chosen folders, TESLA's folder layout of ImageNet-64,
and the errors for folders that are neither."""
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from timm_dd.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from timm_dd.data.imagenet_subsets import IMAGENET_SUBSETS, SUBSET_WNIDS
from timm_dd.distill import get_preset, load_distillation_data


def _image(path: Path, value: int, size=(40, 30)) -> None:
    """A flat image whose red channel is ``value``: which folder a decoded image came from stays readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), (value, 7, 200), dtype=np.uint8)).save(path)


def _fill(split_dir: Path, folders: List[str], per_class: int = 2) -> None:
    for k, wnid in enumerate(folders):
        for j in range(per_class):
            _image(split_dir / wnid / f'{wnid}_{j}.png', 10 * k + j, size=(40 + 10 * j, 30))  # png: values exact


def _full_imagenet_names() -> List[str]:
    """1,000 wnid-like names whose sorted positions put ImageNette's real wnids at its ImageNet indices."""
    anchors = dict(zip(IMAGENET_SUBSETS['imagenette'], SUBSET_WNIDS['imagenette']))
    names, value = [], 1_000_000
    for pos in range(1000):
        value = int(anchors[pos][1:]) if pos in anchors else value + 1
        names.append(f'n{value:08d}')
    assert names == sorted(names) and len(set(names)) == 1000
    return names


def test_a_fastai_release_reads_in_mtts_label_order_at_128(tmp_path, caplog):
    root = tmp_path / 'data'
    wnids = sorted(SUBSET_WNIDS['imagewoof'])  # the folders, alphabetical
    _fill(root / 'imagewoof2' / 'train', wnids)
    _fill(root / 'imagewoof2' / 'val', wnids, per_class=1)
    train = load_dataset('imagewoof', 'train', root=root, cache_dir=tmp_path / 'cache')
    assert train.name == 'imagewoof' and train.split == 'train' and train.stores_pixels
    assert "MTT's numbers use ImageNet's own split" in caplog.text  # fast.ai's v2 split is not MTT's
    assert tuple(train.images.shape) == (20, 3, 128, 128)  # stretched, as MTT's Resize((128, 128))
    assert train.class_names == list(SUBSET_WNIDS['imagewoof'])
    assert train.normalization.mean == IMAGENET_MEAN and train.normalization.std == IMAGENET_STD
    # label i holds the images of MTT's i-th class (folder k of the sorted listing has red value 10 k + j)
    for label, wnid in enumerate(SUBSET_WNIDS['imagewoof']):
        red = train.images[train.labels == label][:, 0, 64, 64].tolist()
        assert red == [10 * wnids.index(wnid), 10 * wnids.index(wnid) + 1]
    assert train.labels[train.images[:, 0, 0, 0] == 10 * wnids.index('n02096294')].unique().tolist() == [0]
    test = load_dataset('imagewoof', 'test', root=root / 'imagewoof2', cache_dir=tmp_path / 'cache')
    assert test.split == 'test' and len(test) == 10 and test.labels.tolist() == list(range(10))
    small = load_dataset('imagewoof', 'train', root=root, image_size=16, use_cache=False)
    assert tuple(small.images.shape[-2:]) == (16, 16)


def test_imagenet_folders_give_the_subset_by_position_and_only_its_folders_are_read(tmp_path):
    names = _full_imagenet_names()
    root = tmp_path / 'imagenet'
    for name in names:
        (root / 'train' / name).mkdir(parents=True)
    chosen = [names[i] for i in IMAGENET_SUBSETS['imagenette']]
    _fill(root / 'train', chosen)
    nette = load_dataset('imagenette', 'train', root=root, image_size=8, cache_dir=tmp_path / 'cache')
    assert nette.class_names == list(SUBSET_WNIDS['imagenette']) and len(nette) == 20
    meow = [names[i] for i in IMAGENET_SUBSETS['imagemeow']]  # a subset without known wnids: by position alone
    _fill(root / 'train', meow, per_class=1)
    cat = load_dataset('imagemeow', 'train', root=root, image_size=8, use_cache=False)
    assert cat.class_names == meow and cat.labels.tolist() == list(range(10))
    # the cache covers the chosen folders: an image elsewhere leaves it valid, one in a chosen folder does not
    _image(root / 'train' / names[5] / 'extra.png', 1)
    load_dataset('imagenette', 'train', root=root, image_size=8, cache_dir=tmp_path / 'cache')
    assert len(list((tmp_path / 'cache').glob('imagenette-train-*'))) == 1
    _image(root / 'train' / chosen[3] / 'extra.png', 1)
    grown = load_dataset('imagenette', 'train', root=root, image_size=8, cache_dir=tmp_path / 'cache')
    assert len(grown) == 21 and len(list((tmp_path / 'cache').glob('imagenette-train-*'))) == 2


def test_folders_that_are_not_imagenet_or_the_release_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='--data-root'):
        load_dataset('imagenette', 'train', root=tmp_path / 'nothing')
    _fill(tmp_path / 'five' / 'train', list(SUBSET_WNIDS['imagenette'][:5]), per_class=1)
    with pytest.raises(ValueError, match='5 class folders.*imagenette needs'):
        load_dataset('imagenette', 'train', root=tmp_path / 'five', use_cache=False)
    for k in range(1000):  # 1,000 folders not named by wnids
        (tmp_path / 'renamed' / 'train' / f'class{k:04d}').mkdir(parents=True)
    with pytest.raises(ValueError, match='not named by ImageNet wnids'):
        load_dataset('imagewoof', 'train', root=tmp_path / 'renamed', use_cache=False)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        load_dataset('imagewoof', 'valid', root=tmp_path / 'renamed', use_cache=False)
    with pytest.raises(FileNotFoundError, match='no val or test/ folder'):
        load_dataset('imagewoof', 'test', root=tmp_path / 'renamed', use_cache=False)


def test_imagenet64_reads_teslas_folder_layout(tmp_path):
    root = tmp_path / 'imagenet64'
    _fill(root / 'train', ['n01440764', 'n01443537'], per_class=2)
    _fill(root / 'val', ['n01440764', 'n01443537'], per_class=1)
    for split_dir in (root / 'train', root / 'val'):
        for p in split_dir.rglob('*.png'):
            Image.open(p).resize((64, 64)).save(p)
    train = load_dataset('imagenet64', 'train', root=root, use_cache=False)
    test = load_dataset('imagenet64', 'test', root=root, use_cache=False)
    assert train.name == 'imagenet64' and tuple(train.images.shape) == (4, 3, 64, 64)
    assert train.labels.tolist() == [0, 0, 1, 1] and test.split == 'test' and len(test) == 2
    assert torch.equal(test.labels, torch.tensor([0, 1]))


def test_a_subset_preset_loads_its_data_from_the_data_root(tmp_path):
    _fill(tmp_path / 'woof' / 'train', list(SUBSET_WNIDS['imagewoof']))
    _fill(tmp_path / 'woof' / 'val', list(SUBSET_WNIDS['imagewoof']), per_class=1)
    cfg = get_preset('imagewoof-ipc1-mtt', {'image_size': 8})
    data = load_distillation_data(cfg, root=tmp_path / 'woof')
    assert data.name == 'imagewoof' and data.num_classes == 10 and data.img_size == 8
    assert data.space.mean == IMAGENET_MEAN and data.source['real_data']['root'] == str((tmp_path / 'woof').resolve())
    assert len(data.train) == 20 and len(data.test) == 10
