"""timm_dd models; importing this package registers them with timm."""
import timm

from .alexnet_dd import *
from .convnet_dd import *
from .resnet_dd import *
from .vgg_dd import *

_MODULES = ('alexnet_dd', 'convnet_dd', 'resnet_dd', 'vgg_dd')


def list_timm_dd_models() -> list:
    """Names of the models this package registers with timm."""
    return sorted(n for m in _MODULES for n in timm.list_models(module=m))


def is_timm_dd_model(name: str) -> bool:
    """True for a timm_dd model name (optionally with a ``.tag``)."""
    return name.split('.')[0] in list_timm_dd_models()
