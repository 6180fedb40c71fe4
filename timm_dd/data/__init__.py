"""Datasets held in memory as tensors, a decode cache and class-balanced selection."""
from .cache import default_cache_dir
from .datasets import (
    BUILTIN_DATASETS, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DIGITS_MEAN,
    DIGITS_STD, IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, ImageDataset, load_dataset, select_ipc,
)
