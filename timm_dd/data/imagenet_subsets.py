"""MTT's ImageNet subsets (Cazenavette et al. 2022, "Dataset Distillation by Matching Training Trajectories"):
ImageNette, ImageWoof, ImageMeow, ImageSquawk, ImageFruit and ImageYellow, ten ImageNet-1K classes each, at 128x128.

* **Classes** are ImageNet-1K class indices in torchvision's order (the sorted wnids), as listed in the ``Config``
  class of MTT's ``utils.py``. Label ``i`` is the ``i``-th index of that list (MTT's ``class_map``), not the sorted
  order: ImageWoof's label 0 is class 193 (Australian terrier). Distilled sets of these subsets share this order.
* **Pixels**: MTT's transform is ``ToTensor``, ``Resize((128, 128))``, ``CenterCrop((128, 128))`` (and
  ``Normalize`` without ZCA). With a size pair, ``Resize`` stretches every image to 128x128 and the crop does
  nothing; the aspect ratio is not kept. Here images are resized the same way with PIL's bilinear filter, which
  antialiases when shrinking, as torchvision's ``Resize`` does on tensors since torchvision 0.17; the torchvision
  of MTT's 2022 environment did not antialias tensors (inferred from its defaults), so pixels differ slightly.
* **Splits**: ``'train'`` is ImageNet's train images of the ten classes, ``'test'`` its validation images (MTT's
  ``split="val"``). Statistics: ImageNet's mean/std.
* **Folders** (``root``, ``--data-root``): a folder holding ``train/`` and ``val/`` with class folders named by wnid:

  - ImageNet-1K itself (1,000 class folders per split, e.g. the ILSVRC2012 images laid out as torchvision's
    ``ImageNet`` and timm expect): the subset's folders are picked by sorted position, as torchvision does, and
    only those ten folders are read;
  - the fast.ai releases ``imagenette2`` / ``imagewoof2`` (only their ten folders; ImageNette and ImageWoof only).
    Their version 2 moved images between train and validation, while MTT used ImageNet's own split (the MTT author
    in ``GeorgeCazenavette/mtt-distillation#22`` and ``#35``): accuracies on them are not comparable with MTT's, and
    loading one logs a warning. The ``-320`` / ``-160`` releases are also already shrunk.

  ``root`` itself, or a sub-folder whose name starts with the subset's (``imagenette2``, ``imagewoof2-320``).
* **Parquet copies** (a Hub dataset repo, ``root='hf://datasets/<owner>/<name>'``, or its files in a folder):
  ImageNet-1K with 1,000 classes in torchvision's order (only the subset's rows are decoded), or the subset alone with
  its wnids as class names.
"""
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .folders import load_image_tree
from .parquet_images import IMAGENET_TEST_FILES, is_parquet_folder, load_parquet_images, parquet_class_names
from .sets import ImageSet

__all__ = ['IMAGENET_SUBSETS', 'SUBSET_WNIDS', 'SUBSET_IMAGE_SIZE', 'subset_class_folders', 'load_imagenet_subset']

_logger = logging.getLogger(__name__)

#: ImageNet-1K class indices of each subset, in label order (MTT ``utils.py``, ``Config``)
IMAGENET_SUBSETS: Dict[str, Tuple[int, ...]] = {
    'imagenette': (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
    'imagewoof': (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
    'imagemeow': (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
    'imagesquawk': (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
    'imagefruit': (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
    'imageyellow': (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
}

#: the wnids of those classes (same order) for the subsets fast.ai releases as folders of their own; a full ImageNet
#: folder is checked against them too
SUBSET_WNIDS: Dict[str, Tuple[str, ...]] = {
    # tench, English springer, cassette player, chain saw, church, French horn, garbage truck, gas pump, golf ball,
    # parachute
    'imagenette': ('n01440764', 'n02102040', 'n02979186', 'n03000684', 'n03028079', 'n03394916', 'n03417042',
                   'n03425413', 'n03445777', 'n03888605'),
    # Australian terrier, Border terrier, Samoyed, beagle, Shih-Tzu, English foxhound, Rhodesian ridgeback, dingo,
    # golden retriever, Old English sheepdog
    'imagewoof': ('n02096294', 'n02093754', 'n02111889', 'n02088364', 'n02086240', 'n02089973', 'n02087394',
                  'n02115641', 'n02099601', 'n02105641'),
}

#: MTT's ``--res`` default for the subsets
SUBSET_IMAGE_SIZE = 128
IMAGENET_CLASSES = 1000
_SPLIT_FOLDERS = {'train': ('train',), 'test': ('val', 'test'), 'val': ('val',)}


def subset_class_folders(split_dir: Path, subset: str) -> List[str]:
    """The class folder names of ``subset`` in ``split_dir``, in label order.

    Raises:
        ValueError: the folder is neither ImageNet-1K's (1,000 class folders) nor a release of the subset alone, or
            its folders at the subset's positions are not the subset's wnids.
    """
    indices, wnids = IMAGENET_SUBSETS[subset], SUBSET_WNIDS.get(subset)
    folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))
    if len(folders) == IMAGENET_CLASSES:
        chosen = [folders[i] for i in indices]
        if wnids is not None and tuple(chosen) != wnids:
            raise ValueError(f'{split_dir} has 1,000 class folders, but those at {subset}\'s ImageNet positions are '
                             f'{chosen}, not its wnids {list(wnids)}: the folders are not named by ImageNet wnids')
        return chosen
    if wnids is not None and set(wnids) <= set(folders):
        _logger.warning('%s: read as a release of %s alone. fast.ai\'s imagenette2/imagewoof2 rebalanced the train and '
                        'validation images; MTT\'s numbers use ImageNet\'s own split (GeorgeCazenavette/'
                        'mtt-distillation#22, #35): for a comparison with them, pass ImageNet-1K\'s folders',
                        split_dir, subset)
        return list(wnids)
    expected = (f"ImageNet-1K's 1,000 wnid folders, or {subset}'s ten ({', '.join(wnids)})" if wnids is not None
                else f"ImageNet-1K's 1,000 wnid folders ({subset} is picked from them by position)")
    raise ValueError(f'{split_dir} holds {len(folders)} class folders; {subset} needs {expected}')


def _find_root(root: Path, subset: str) -> Path:
    if (root / 'train').is_dir():
        return root
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name.lower().startswith(subset) and (entry / 'train').is_dir():
                return entry
    raise FileNotFoundError(
        f'{subset} not found under {root}: pass --data-root DIR (root= in Python) with DIR holding train/ and val/ '
        f'class folders named by wnid: ImageNet-1K\'s, or fast.ai\'s {subset}2 release extracted')


def _check_split(split: str, subset: str) -> None:
    if split not in _SPLIT_FOLDERS:
        raise ValueError(f"{subset} has the splits 'train' and 'test' (ImageNet's validation images), got {split!r}")


def _split_dir(root: Path, split: str, subset: str) -> Path:
    for folder in _SPLIT_FOLDERS[split]:
        if (root / folder).is_dir():
            return root / folder
    raise FileNotFoundError(f'no {" or ".join(_SPLIT_FOLDERS[split])}/ folder in {root} for the {split} split of '
                            f'{subset}')


def load_imagenet_subset(
        subset: str,
        split: str,
        root: Union[str, os.PathLike],
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        image_size: Optional[Tuple[int, int]] = None,
        use_cache: bool = True,
) -> ImageSet:
    """The ``split`` of MTT's ImageNet subset ``subset`` read from the folder ``root`` (see the module docstring),
    as uint8 pixels of ``image_size`` (default 128x128), decoded once and then read from the cache."""
    if subset not in IMAGENET_SUBSETS:
        raise ValueError(f'unknown ImageNet subset {subset!r}; known: {", ".join(IMAGENET_SUBSETS)}')
    size = image_size or (SUBSET_IMAGE_SIZE, SUBSET_IMAGE_SIZE)
    _check_split(split, subset)
    if is_parquet_folder(Path(root).expanduser()):
        files = ('train',) if split == 'train' else IMAGENET_TEST_FILES
        return load_parquet_images(root, split, cache_dir, size, use_cache, name=subset, file_splits=files,
                                   classes=_parquet_classes(Path(root), split, files, subset))
    split_dir = _split_dir(_find_root(Path(root).expanduser(), subset), split, subset)
    return load_image_tree(split_dir, split, cache_dir, size, use_cache,
                           classes=subset_class_folders(split_dir, subset), name=subset)


def _parquet_classes(root: Path, split: str, files: Tuple[str, ...], subset: str) -> List[int]:
    """The labels of ``subset`` in a parquet copy: ImageNet-1K's (1,000 classes in torchvision's order, as the Hub's
    ``imagenet-1k`` has them) by position, or a copy of the subset alone whose class names are its wnids."""
    names = parquet_class_names(root, split, files)
    wnids = SUBSET_WNIDS.get(subset)
    if len(names) == IMAGENET_CLASSES:
        return list(IMAGENET_SUBSETS[subset])
    if wnids is not None and set(wnids) <= set(names):
        return [names.index(w) for w in wnids]
    raise ValueError(f'the parquet dataset in {root} has {len(names)} named classes; {subset} needs ImageNet-1K\'s '
                     f'1,000 or its own ten wnids as class names')
