"""ZCA whitening as used by MTT (``--zca``; kornia's ``ZCAWhitening(eps=0.1, compute_inv=True)``).

Math: flatten images to ``(N, D)``, ``mean`` over N,
``cov = Xcᵀ Xc / (N - 1)``, ``cov = U diag(S) Uᵀ``, ``W = U diag((S + eps)^-1/2) Uᵀ``; whitened
``y = (x - mean) @ W`` and back ``x = y @ W_inv + mean`` with ``W_inv = U diag((S + eps)^1/2) Uᵀ``.
``eps`` is added to the eigenvalues; MTT uses 0.1 (strong regularization), not kornia's 1e-6 default.

The covariance is accumulated chunk by chunk (float32 matmuls summed in float64) so the whole CIFAR
training set (50,000 x 3072) fits without a float64 copy; the eigen-decomposition runs in float64 and the
stored state is float32. Persistable state: ``mean_vector [1, D]``, ``transform_matrix [D, D]``,
``transform_inv [D, D]`` (the names MTT and ``zca.safetensors`` use) plus ``eps``.
"""
import logging
import math
import time
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ['ZCA', 'ZCA_KEYS']

_logger = logging.getLogger(__name__)

ZCA_KEYS = ('mean_vector', 'transform_matrix', 'transform_inv')


def _check_images(x: torch.Tensor, name: str = 'x') -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{name} must be 4-D [N, C, H, W], got shape {tuple(x.shape)}')
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise TypeError(f'{name} must be a floating point tensor (e.g. pixels in [0, 1]) or uint8 pixels, got '
                        f'{x.dtype}')
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f'{name} contains NaN or Inf values')


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``x.T @ x``; on CPU through numpy, whose ``dot`` spots the transpose and uses BLAS syrk (half the flops)."""
    if x.device.type == 'cpu' and not x.requires_grad:
        a = x.contiguous().numpy()
        return torch.from_numpy(np.dot(a.T, a))
    return x.T @ x


def _chunk(flat: torch.Tensor, i: int, chunk_size: int) -> torch.Tensor:
    """Rows ``i .. i + chunk_size`` as floats: uint8 pixels become [0, 1] float32, as a loaded set's are."""
    rows = flat[i:i + chunk_size]
    return rows.float().div_(255) if rows.dtype == torch.uint8 else rows


def _mean_and_covariance(flat: torch.Tensor, chunk_size: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two passes over chunks of ``[N, D]`` (uint8 pixels converted chunk by chunk: no float copy of the set): the
    float64 mean, then centered matmuls summed in ``dtype``."""
    n, dim = flat.shape
    mean = torch.zeros(dim, dtype=torch.float64, device=flat.device)
    for i in range(0, n, chunk_size):
        mean += _chunk(flat, i, chunk_size).sum(0, dtype=torch.float64)
    mean /= n
    mm_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    mean_mm = mean.to(mm_dtype)
    cov = torch.zeros(dim, dim, dtype=dtype, device=flat.device)
    for i in range(0, n, chunk_size):
        xc = _chunk(flat, i, chunk_size).to(mm_dtype) - mean_mm
        cov += _gram(xc).to(dtype)
    cov /= n - 1
    return mean, (cov + cov.T) * 0.5


def _eigh(cov: torch.Tensor, threads: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` with ``threads`` CPU threads for its duration (see :meth:`ZCA.fit`)."""
    prev_threads = torch.get_num_threads()
    if threads is not None and cov.device.type == 'cpu':
        torch.set_num_threads(max(1, int(threads)))
    try:
        return torch.linalg.eigh(cov)
    finally:
        torch.set_num_threads(prev_threads)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f'eps must be a finite number >= 0, got {eps}')
    return eps


class ZCA:
    """A fitted ZCA whitening transform.

    Create with :meth:`fit` (from data) or :meth:`from_state_dict` (from saved state). Transforms keep the
    input's shape and floating dtype, compute in float32 and are differentiable.

    Args:
        mean_vector: Per-feature mean, ``[1, D]``.
        transform_matrix: Whitening matrix ``W``, ``[D, D]``.
        transform_inv: Inverse ``W_inv``, ``[D, D]``; ``None`` disables :meth:`inverse_transform`.
        eps: Regularizer that was added to the covariance eigenvalues.
    """

    def __init__(
            self,
            mean_vector: torch.Tensor,
            transform_matrix: torch.Tensor,
            transform_inv: Optional[torch.Tensor] = None,
            eps: float = 0.1,
    ):
        self.eps = _check_eps(eps)
        mean_vector = torch.as_tensor(mean_vector).detach()
        if mean_vector.dim() == 1:
            mean_vector = mean_vector[None]
        if mean_vector.dim() != 2 or mean_vector.shape[0] != 1:
            raise ValueError(f'mean_vector must have shape [1, D], got {tuple(mean_vector.shape)}')
        dim = mean_vector.shape[1]
        mats = {'transform_matrix': transform_matrix, 'transform_inv': transform_inv}
        for name, m in mats.items():
            if m is None:
                continue
            if tuple(m.shape) != (dim, dim):
                raise ValueError(f'{name} must have shape [{dim}, {dim}] to match mean_vector, got {tuple(m.shape)}')
        tensors = {'mean_vector': mean_vector, **mats}
        for name, t in tensors.items():
            if t is not None and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
                raise ValueError(f'{name} must be a finite floating point tensor')
        self.mean_vector = mean_vector.float().contiguous()
        self.transform_matrix = transform_matrix.detach().float().contiguous()
        self.transform_inv = None if transform_inv is None else transform_inv.detach().float().contiguous()

    @classmethod
    def fit(
            cls,
            x: torch.Tensor,
            eps: float = 0.1,
            chunk_size: int = 8192,
            compute_inv: bool = True,
            dtype: torch.dtype = torch.float64,
            eigh_threads: Optional[int] = 1,
    ) -> 'ZCA':
        """Fit on images ``x`` ``[N, C, H, W]`` (MTT: the whole training set, pixels in [0, 1]).

        Args:
            x: Floating point images, or uint8 pixels (read as ``x / 255``, chunk by chunk), N >= 2.
            eps: Added to the covariance eigenvalues (MTT: 0.1).
            chunk_size: Rows per covariance matmul; bounds the extra memory to ``chunk_size x D`` floats.
            compute_inv: Also compute ``transform_inv`` (needed by :meth:`inverse_transform`).
            dtype: Precision of the covariance accumulation and eigen-decomposition. float64 (default) is
                accurate for any eps; float32 is often faster and fine for eps = 0.1.
            eigh_threads: CPU threads for the eigen-decomposition, ``None`` keeps torch's setting. Measured on a
                busy 2-core machine, D = 3072 in float64: ~10 s with 1 thread vs ~60 s with 2 (the memory-bound
                tridiagonal reduction scales poorly and collapses when cores are shared). The setting is
                process-wide while the decomposition runs and restored afterwards.

        Returns:
            The fitted transform, state stored in float32 on ``x.device``.
        """
        _check_images(x)
        eps = _check_eps(eps)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
        if chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
        n = x.shape[0]
        if n < 2:
            raise ValueError(f'ZCA needs at least 2 images to estimate a covariance, got {n}')
        t0 = time.perf_counter()
        mean, cov = _mean_and_covariance(x.detach().reshape(n, -1), chunk_size, dtype)
        dim = mean.shape[0]
        t1 = time.perf_counter()
        evals, evecs = _eigh(cov, eigh_threads)
        # tiny negative eigenvalues are rounding noise of a PSD matrix
        evals = evals.clamp_min(0) + eps
        if bool((evals <= 0).any()):
            raise ValueError('covariance is singular and eps == 0: use eps > 0')
        t2 = time.perf_counter()
        transform = (evecs * evals.rsqrt()) @ evecs.T
        transform_inv = (evecs * evals.sqrt()) @ evecs.T if compute_inv else None
        _logger.debug(
            f'ZCA fit on {n}x{dim}: covariance {t1 - t0:.2f}s, eigh {t2 - t1:.2f}s, '
            f'matrices {time.perf_counter() - t2:.2f}s')
        return cls(mean[None], transform, transform_inv, eps=eps)

    @property
    def dim(self) -> int:
        """Number of features D = C * H * W."""
        return self.mean_vector.shape[1]

    @property
    def device(self) -> torch.device:
        return self.mean_vector.device

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f'expected a floating point tensor, got {getattr(x, "dtype", type(x).__name__)}')
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(
                f'expected a batch [N, ...] with {self.dim} features per sample, got shape {tuple(x.shape)}')
        return x.reshape(x.shape[0], -1).float()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` ``[N, C, H, W]`` (or ``[N, D]``): ``(x - mean) @ W``."""
        flat = self._flatten(x)
        w = self.transform_matrix.to(flat.device)
        out = (flat - self.mean_vector.to(flat.device)) @ w
        return out.reshape(x.shape).to(x.dtype)

    __call__ = transform

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: ``y @ W_inv + mean``."""
        if self.transform_inv is None:
            raise RuntimeError('this ZCA was fitted with compute_inv=False; inverse_transform is unavailable')
        flat = self._flatten(x)
        out = flat @ self.transform_inv.to(flat.device) + self.mean_vector.to(flat.device)
        return out.reshape(x.shape).to(x.dtype)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """``{'mean_vector', 'transform_matrix', 'transform_inv'}`` (float32); ``eps`` is the attribute."""
        state = {'mean_vector': self.mean_vector, 'transform_matrix': self.transform_matrix}
        if self.transform_inv is not None:
            state['transform_inv'] = self.transform_inv
        return state

    @classmethod
    def from_state_dict(
            cls,
            state: Mapping[str, Union[torch.Tensor, float]],
            eps: Optional[float] = None,
    ) -> 'ZCA':
        """Rebuild from :meth:`state_dict` output. ``eps`` may also come as a state entry ``'eps'``."""
        missing = [k for k in ZCA_KEYS[:2] if k not in state]
        if missing:
            raise KeyError(f'ZCA state is missing {missing}; expected keys {ZCA_KEYS}')
        if eps is None:
            eps = state.get('eps', 0.1)
        eps = float(eps.item()) if isinstance(eps, torch.Tensor) else float(eps)
        return cls(state['mean_vector'], state['transform_matrix'], state.get('transform_inv'), eps=eps)

    def to(self, device: Union[str, torch.device, None] = None) -> 'ZCA':
        """Move the state to ``device`` in place (like ``nn.Module.to``); returns ``self``."""
        self.mean_vector = self.mean_vector.to(device)
        self.transform_matrix = self.transform_matrix.to(device)
        if self.transform_inv is not None:
            self.transform_inv = self.transform_inv.to(device)
        return self

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(dim={self.dim}, eps={self.eps}, device={self.device})'
