"""Optional dependencies: imported where needed, with an error that names the extra to install."""
import importlib
from types import ModuleType

__all__ = ['require']


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or ``ImportError`` saying ``pip install 'timm_dd[<extra>]'`` (what it is needed for)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split('.')[0]
        raise ImportError(f'{purpose} needs {package}, which is not installed: pip install "timm_dd[{extra}]"') \
            from e
