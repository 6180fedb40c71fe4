"""Reporting to the experiment trackers of the caller's ``accelerate.Accelerator`` (TensorBoard, W&B, ...).

Set up by the command lines (``--log-with``, ``Accelerator(log_with=...)`` + ``init_trackers``); the library only
reports when trackers exist, from the main process (Accelerate's trackers log there). The JSONL metrics written
next to the runs stay the always-on local record.
"""
from typing import Any, Dict

import torch
from PIL import Image

from .data.space import to_uint8

__all__ = ['log_metrics', 'log_image', 'takes_images']


def _trackers(accelerator: Any) -> list:
    return list(getattr(accelerator, 'trackers', None) or [])


def log_metrics(accelerator: Any, values: Dict[str, Any], step: int) -> None:
    """``accelerator.log`` of the finite numbers in ``values`` (no-op without trackers)."""
    if accelerator is None or not _trackers(accelerator):
        return
    scalars = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        accelerator.log(scalars, step=step)


def takes_images(accelerator: Any) -> bool:
    """Whether this process has a tracker that takes images (so a picture is worth rendering)."""
    if accelerator is None or not getattr(accelerator, 'is_main_process', True):
        return False
    return any(hasattr(tracker, 'log_images') for tracker in _trackers(accelerator))


def log_image(accelerator: Any, name: str, image: torch.Tensor, step: int) -> None:
    """An image ``[3, H, W]`` in [0, 1] (a grid of distilled images) to every tracker that takes images."""
    if accelerator is None or not getattr(accelerator, 'is_main_process', True):
        return
    for tracker in _trackers(accelerator):
        if not hasattr(tracker, 'log_images'):
            continue
        if tracker.name == 'tensorboard':
            tracker.log_images({name: image.unsqueeze(0).cpu().numpy()}, step=step)  # NCHW
        else:
            arr = to_uint8(image).permute(1, 2, 0).cpu().numpy()
            tracker.log_images({name: [Image.fromarray(arr)]}, step=step)
