"""Labelled image sets in memory (:class:`ImageSet`), the space their images are in (:class:`ImageSpace`), loaders
for CIFAR-10/100, ImageNet-1K (64x64) and MTT's ImageNet subsets, image folders, zip archives, parquet datasets (the
Hub's layout) and digits, a decode cache, ZCA and class-balanced selection."""
from .cache import default_cache_dir
from .datasets import (
    BUILTIN_DATASETS, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DIGITS_MEAN,
    DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, load_dataset, select_ipc,
)
from .imagenet_subsets import IMAGENET_SUBSETS
from .parquet_images import HUB_DATASET_PREFIX
from .sets import DataSplits, ImageSet, as_image_set
from .space import ImageSpace
from .zca import ZCA

__all__ = [
    'ImageSet', 'DataSplits', 'as_image_set', 'ImageSpace', 'ZCA', 'load_dataset', 'select_ipc', 'default_cache_dir',
    'BUILTIN_DATASETS', 'IMAGENET_SUBSETS', 'HUB_DATASET_PREFIX',
    'CIFAR10_CLASSES', 'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD', 'DIGITS_MEAN', 'DIGITS_STD',
    'IMAGENET_MEAN', 'IMAGENET_STD', 'IMG_EXTENSIONS',
]
