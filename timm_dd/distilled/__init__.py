"""Distilled datasets: the :class:`DistilledSet` container and its checks, its folder format, its card, image grids
and other tools' layouts."""
from .distilled_set import DistilledSet
from .format import CARD_FILE, CONFIG_FILE, DISTILLED_FILE, FORMAT_NAME, FORMAT_VERSION, ZCA_FILE, DistilledSetError
from .grid import make_class_grid, save_grid
from .validation import IMAGE_SPACES, SOFT_LABEL_KINDS

__all__ = [
    'DistilledSet', 'DistilledSetError', 'make_class_grid', 'save_grid', 'CARD_FILE',
    'CONFIG_FILE', 'DISTILLED_FILE', 'FORMAT_NAME', 'FORMAT_VERSION', 'ZCA_FILE', 'IMAGE_SPACES', 'SOFT_LABEL_KINDS',
]
