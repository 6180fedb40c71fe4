"""Adapter around the official MTT code (GeorgeCazenavette/mtt-distillation, MIT licence) for side-by-side timing.

Nothing of the official repository is copied here: its modules (``reparam_module.ReparamModule``,
``networks.ConvNet``, ``utils.DiffAugment`` / ``utils.ParamDiffAug``) are imported at run time from a local checkout
(kept in the git-ignored ``carry/mtt-distillation``; never commit it). The inner loop of one distillation
iteration (``distill.py``: the ``student_params`` list, the per-step gradient with ``create_graph=True``,
``param_loss / param_dist``, one ``backward``) is written out below following the official algorithm, so its cost
and memory can be compared with ``timm_dd.distill.trajectory_match``.

Get the checkout with ``git clone https://github.com/GeorgeCazenavette/mtt-distillation carry/mtt-distillation``
(or export a snapshot there, with a ``COMMIT`` file holding its commit id: :func:`official_commit` reports it).
Checked against commit 50dccea47ba48b9cfb3b9c59375d7da92e4e603b. Its ``utils.py`` imports ``kornia`` (used only
for its ZCA in ``get_dataset``, not by anything here); when kornia is not installed, an empty stand-in module is
registered during the import and :attr:`OfficialMTT.stubbed` says so. Likewise for ``scipy.ndimage.interpolation``
(removed in recent SciPy).

Usage::

    from official_mtt import OfficialMTT
    off = OfficialMTT('carry/mtt-distillation', channel=3, num_classes=10, im_size=32, device='cuda')
    loss, grad_images, grad_lr = off.iteration(images, labels, syn_lr, start, target, syn_steps=30)
"""
import importlib
import sys
import types
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['OfficialMTT', 'import_official', 'OfficialNotFound']

_MODULES = ('reparam_module', 'networks', 'utils')
_OPTIONAL = ('kornia', 'scipy.ndimage.interpolation')
_CACHE = {}


class OfficialNotFound(FileNotFoundError):
    """The checkout is missing or lacks the expected files."""


def _available(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def import_official(checkout: Union[str, Path]) -> types.SimpleNamespace:
    """Import ``reparam_module``, ``networks`` and ``utils`` from ``checkout``.

    They are imported as top-level modules (``utils.py`` does ``from networks import ...``) with the checkout first
    on ``sys.path``, then moved out of ``sys.modules`` under ``mtt_official.<name>`` so that the generic names
    ``utils`` / ``networks`` of other code are left as they were. Returns a namespace with the three modules plus
    ``stubbed`` (optional dependencies replaced by empty modules) and ``path``.
    """
    path = Path(checkout).expanduser().resolve()
    if path in _CACHE:
        return _CACHE[path]
    missing = [f'{m}.py' for m in _MODULES if not (path / f'{m}.py').is_file()]
    if missing:
        raise OfficialNotFound(f'{path}: not an mtt-distillation checkout (missing {", ".join(missing)})')
    saved = {m: sys.modules.pop(m) for m in _MODULES if m in sys.modules}
    stubbed = []
    for name in _OPTIONAL:
        if not _available(name):
            stub = types.ModuleType(name)
            if name == 'scipy.ndimage.interpolation':
                try:
                    from scipy.ndimage import rotate
                    stub.rotate = rotate
                except ImportError:
                    pass
            sys.modules[name] = stub
            stubbed.append(name)
    sys.path.insert(0, str(path))
    try:
        with warnings.catch_warnings():  # utils.py imports the deprecated scipy.ndimage.interpolation
            warnings.simplefilter('ignore', DeprecationWarning)
            mods = {m: importlib.import_module(m) for m in _MODULES}
    finally:
        sys.path.remove(str(path))
        for m in _MODULES:
            mod = sys.modules.pop(m, None)
            if mod is not None:
                sys.modules[f'mtt_official.{m}'] = mod
        sys.modules.update(saved)
        for name in stubbed:  # `utils` keeps its reference; other code must not see the stand-in
            sys.modules.pop(name, None)
    ns = types.SimpleNamespace(path=path, stubbed=stubbed, **mods)
    _CACHE[path] = ns
    return ns


def official_commit(checkout: Union[str, Path]) -> Optional[str]:
    """The checkout's commit: ``git rev-parse HEAD`` when the checkout is itself a git work tree (not merely a folder
    inside another repository), else the first line of a ``COMMIT`` file in it (write one when exporting a
    snapshot), else ``None``."""
    import subprocess
    path = Path(checkout).expanduser().resolve()
    try:
        top = subprocess.run(['git', '-C', str(path), 'rev-parse', '--show-toplevel'], capture_output=True,
                             text=True, timeout=10)
        if top.returncode == 0 and Path(top.stdout.strip()).resolve() == path:
            head = subprocess.run(['git', '-C', str(path), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                  timeout=10)
            if head.returncode == 0 and head.stdout.strip():
                return head.stdout.strip()
    except Exception:
        pass
    marker = path / 'COMMIT'
    if marker.is_file():
        lines = marker.read_text().split()
        return lines[0] if lines else None
    return None


class OfficialMTT:
    """The official ConvNet wrapped in the official ``ReparamModule``, and one official distillation iteration.

    Args:
        checkout: Path of the mtt-distillation checkout.
        channel, num_classes, im_size: Data shape (``im_size`` an int or ``(H, W)``).
        net_width, net_depth, net_act, net_norm, net_pooling: The official ``ConvNet`` arguments; the defaults are
            its ``get_default_convnet_setting()`` (ConvNetD3: width 128, ReLU, instance norm, average pooling).
        device: Where the network lives.
        dtype: Parameter dtype (``torch.float64`` for exact comparisons).
        dsa_strategy: The official ``--dsa_strategy`` default.
    """

    def __init__(self, checkout: Union[str, Path], channel: int = 3, num_classes: int = 10,
                 im_size: Union[int, Tuple[int, int]] = 32, net_width: int = 128, net_depth: int = 3,
                 net_act: str = 'relu', net_norm: str = 'instancenorm', net_pooling: str = 'avgpooling',
                 device: Union[str, torch.device] = 'cpu', dtype: torch.dtype = torch.float32,
                 dsa_strategy: str = 'color_crop_cutout_flip_scale_rotate'):
        self.mods = import_official(checkout)
        im_size = (im_size, im_size) if isinstance(im_size, int) else tuple(im_size)
        net = self.mods.networks.ConvNet(channel=channel, num_classes=num_classes, net_width=net_width,
                                         net_depth=net_depth, net_act=net_act, net_norm=net_norm,
                                         net_pooling=net_pooling, im_size=im_size)
        self.student_net = self.mods.reparam_module.ReparamModule(net.to(dtype)).to(device)
        self.student_net.train()
        self.num_params = sum(p.numel() for p in self.student_net.parameters())
        self.dsa_param = self.mods.utils.ParamDiffAug()
        self.dsa_strategy = dsa_strategy
        self.device = torch.device(device)
        self.criterion = nn.CrossEntropyLoss().to(self.device)

    @property
    def stubbed(self) -> List[str]:
        return list(self.mods.stubbed)

    def flat_params(self) -> torch.Tensor:
        """The network's current (random-init) parameters as one flat vector, official order."""
        return self.student_net.flat_param.detach().clone()

    def iteration(
            self,
            image_syn: torch.Tensor,
            label_syn: torch.Tensor,
            syn_lr: torch.Tensor,
            starting_params: torch.Tensor,
            target_params: torch.Tensor,
            syn_steps: int,
            batch_syn: Optional[int] = None,
            dsa: bool = True,
            indices: Optional[Sequence[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One official-style iteration: ``syn_steps`` SGD steps on the synthetic images from ``starting_params``,
        ``param_loss / param_dist`` against ``target_params``, one ``backward`` (no optimizer step).

        Batches are the official ones (chunks of a ``torch.randperm`` from the global RNG, size ``batch_syn``,
        default all images, popped from the end) unless ``indices`` gives every step's indices; DSA is the official
        ``DiffAugment`` ('S' mode, global RNG). Returns ``(loss, d loss / d images, d loss / d syn_lr)``.
        """
        device = self.device
        image_syn = image_syn.detach().to(device).requires_grad_(True)
        syn_lr = syn_lr.detach().to(device).requires_grad_(True)
        y_hat = label_syn.to(device)
        batch_syn = batch_syn or image_syn.shape[0]
        target_params = target_params.detach().to(device).reshape(-1)
        starting_params = starting_params.detach().to(device).reshape(-1)
        student_params = [starting_params.clone().requires_grad_(True)]
        indices_chunks: List[torch.Tensor] = []
        for step in range(syn_steps):
            if indices is not None:
                these_indices = indices[step]
            else:
                if not indices_chunks:
                    perm = torch.randperm(len(image_syn))
                    indices_chunks = list(torch.split(perm, batch_syn))
                these_indices = indices_chunks.pop()
            x = image_syn[these_indices]
            this_y = y_hat[these_indices]
            if dsa:
                x = self.mods.utils.DiffAugment(x, self.dsa_strategy, param=self.dsa_param)
            x = self.student_net(x, flat_param=student_params[-1])
            ce_loss = self.criterion(x, this_y)
            grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - syn_lr * grad)
        param_loss = F.mse_loss(student_params[-1], target_params, reduction='sum') / self.num_params
        param_dist = F.mse_loss(starting_params, target_params, reduction='sum') / self.num_params
        grand_loss = param_loss / param_dist
        grand_loss.backward()
        grad_images = image_syn.grad if image_syn.grad is not None else torch.zeros_like(image_syn)
        grad_lr = syn_lr.grad if syn_lr.grad is not None else torch.zeros_like(syn_lr)
        del student_params
        return grand_loss.detach(), grad_images, grad_lr
