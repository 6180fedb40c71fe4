"""timm_dd models; importing this package registers them with timm."""
import timm
import torch

from ._common import describe_input
from .alexnet_dd import *
from .convnet_dd import *
from .resnet_dd import *
from .vgg_dd import *

_MODULES = ('alexnet_dd', 'convnet_dd', 'resnet_dd', 'vgg_dd')


def create_network(name: str, **kwargs) -> 'torch.nn.Module':
    """``timm.create_model(name, **kwargs)`` with timm_dd's models registered: the one model factory of students,
    teachers, experts and distillation networks. An unknown name or a keyword the architecture does not take is a
    ``ValueError`` saying so."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise ValueError(f'cannot create {name} with keywords {kwargs}: {e}; drop the keywords {name} does not '
                         f'take') from e
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f'unknown model {name!r}; see timm.list_models() (timm_dd adds *_dd, *_mtt, '
                             f'convnet*)') from e
        raise


def list_timm_dd_models() -> list:
    """Names of the models this package registers with timm."""
    return sorted(n for m in _MODULES for n in timm.list_models(module=m))


def is_timm_dd_model(name: str) -> bool:
    """True for a timm_dd model name (optionally with a ``.tag``)."""
    return name.split('.')[0] in list_timm_dd_models()
