"""timm_dd: timm models, training and trajectory matching for dataset distillation across architectures.

``import timm_dd`` registers the models with timm (``timm.create_model('resnet18_dd', ...)``).
"""
from .version import __version__
from .layers import get_keep_rate, get_keep_rates, keep_rate_units, set_drop_generator, set_keep_rate
from . import models
from .data import DataSplits, ImageSet, ImageSpace, load_dataset, select_ipc
from .distilled import DistilledSet, DistilledSetError, save_grid
from .distilled.interchange import export_distilled
from .hub import HubError, import_distilled, load_distilled, push_distilled
