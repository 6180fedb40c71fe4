from .drop import DropPath, VirtualShortcut, check_keep_rate, sample_keep_mask
from .keep_rate import (
    DROP_PATH_RULES, get_keep_rate, get_keep_rates, keep_rate_units, keep_rates_from_drop_path_rate,
    set_drop_generator, set_keep_rate,
)
from .norm import NORM_TYPES, check_norm, create_norm2d
from .head import check_global_pool, head_in_features, pool_features
