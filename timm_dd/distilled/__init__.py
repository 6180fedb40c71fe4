"""Distilled datasets: the :class:`DistilledSet` container, its folder format and image grids."""
from .distilled_set import (
    CARD_FILE, CONFIG_FILE, DISTILLED_FILE, FORMAT_NAME, FORMAT_VERSION, IMAGE_SPACES, SOFT_LABEL_KINDS, ZCA_FILE,
    DistilledSet, DistilledSetError, load_distilled_folder,
)
from .grid import make_class_grid, save_grid
