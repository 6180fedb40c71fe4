"""The data of a cross-architecture experiment: a distilled set (any layout) or real images per class, and the test
split, both in the space the networks see (a :class:`~timm_dd.data.DataSplits`)."""
import logging
from typing import Any, Dict, Optional, Tuple

from ..data import DataSplits, ImageSet, ImageSpace, load_dataset, select_ipc
from ..distilled import DistilledSet
from ..distilled.interchange import detect_layout
from ..hub import import_distilled, load_distilled
from ..seeding import generator_for

__all__ = ['prepare_data']

_logger = logging.getLogger(__name__)


def prepare_data(
        data: Optional[str] = None,
        real_ipc: Optional[int] = None,
        dataset: Optional[str] = None,
        data_root: Optional[str] = None,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        image_size: Optional[int] = None,
        soft_label_temperature: Optional[float] = None,
        layout: Optional[str] = None,
        image_space: Optional[str] = None,
        zca_eps: float = 0.1,
        strict: bool = False,
) -> DataSplits:
    """Load a distilled set (folder or Hub id) or draw ``real_ipc`` real images per class from ``dataset``
    (``real_ipc=-1``: all of them).

    The test set is ``dataset`` (or the distilled set's ``source_dataset``), mapped into the training set's
    image space and size. Class names of the two must agree. ``image_size`` resizes a real dataset.

    A set made by another tool (a folder of ``images_best.pt`` / ``images.pt`` ... files, see
    :func:`timm_dd.import_distilled`) is imported on the fly: ``layout`` (detected from the files when not given),
    ``image_space`` and ``dataset`` state what the files cannot. Soft labels become probabilities here, once:
    logits through ``softmax(y / t)`` with ``soft_label_temperature`` (or the set's own temperature; neither is an
    error), probabilities as they are (checked to sum to 1). Real data is used in ``image_space`` 'normalized'
    (default) or 'zca' (ZCA of [0, 1] pixels with ``zca_eps``, fitted on the train split: the space of MTT's --zca
    sets, e.g. for an ELF feature model that must live in the set's space); a set imported in 'zca' space gets its
    ZCA refitted with the same ``zca_eps`` (0.1: MTT, ATT, DATM, DD-Ranking). ``strict`` refuses a saved set whose
    files have no recorded checksum (else it loads with a note, kept in the splits' ``notes`` and the results).
    """
    if (data is None) == (real_ipc is None):
        raise ValueError('give either a distilled set (--data, `data`) or a number of real images per class '
                         '(--real-ipc, `real_ipc`), not both and not neither')
    loads = dict(root=data_root, cache_dir=cache_dir)
    if data is not None:
        return _distilled_splits(data, dataset, layout, image_space, soft_label_temperature, loads, strict, zca_eps)
    if real_ipc == 0 or real_ipc < -1:
        raise ValueError(f'real_ipc (--real-ipc) must be a positive number of images per class, or -1 for all of '
                         f'them; got {real_ipc}')
    if dataset is None:
        raise ValueError('real_ipc (--real-ipc) needs a dataset (--dataset: e.g. digits, cifar10, or a '
                         'folder/zip)')
    return _real_splits(dataset, real_ipc, seed, image_space or 'normalized', zca_eps,
                        dict(loads, image_size=image_size))


def _distilled_splits(data: str, dataset: Optional[str], layout: Optional[str], image_space: Optional[str],
                      soft_label_temperature: Optional[float], loads: Dict[str, Any], strict: bool,
                      zca_eps: float = 0.1) -> DataSplits:
    dset = _load_set(data, layout, dataset, image_space, soft_label_temperature, strict, zca_eps)
    source, test = _test_split(dset, data, dataset, loads)
    _check_classes(dset.class_names, test.class_names, dset.num_classes, test.num_classes, data, source)
    train = dset.to_image_set(soft_label_temperature)
    return DataSplits(train, test.in_space(dset.space), source,
                      f'{dset.method} {dset.source_dataset} ipc {dset.ipc} ({data})',
                      dict(kind='distilled', path=str(data), method=dset.method, ipc=dset.ipc,
                           source_dataset=dset.source_dataset), notes=list(dset.load_notes))


def _real_splits(dataset: str, real_ipc: int, seed: int, space: str, zca_eps: float,
                 loads: Dict[str, Any]) -> DataSplits:
    train_full = load_dataset(dataset, 'train', **loads)
    test = load_dataset(dataset, 'test', **loads)
    _check_classes(train_full.class_names, test.class_names, train_full.num_classes, test.num_classes, dataset, dataset)
    if real_ipc < 0:  # the whole training set (e.g. for the ELF feature model)
        sub = train_full
    else:
        idx = select_ipc(train_full.labels, real_ipc, generator=generator_for(seed),
                         num_classes=train_full.num_classes)
        sub = train_full.subset(idx)
    if space not in ('zca', 'normalized'):
        raise ValueError(f"real data can be used in 'normalized' or 'zca' space, got image_space={space!r}")
    # MTT's --zca space: ZCA (eps zca_eps) of [0, 1] pixels, fitted on the whole train split
    model_space = ImageSpace.fit(space, train_full.stored_pixels() if space == 'zca' else None, zca_eps,
                                 train_full.normalization if space == 'normalized' else None)
    return DataSplits(sub.in_space(model_space), test.in_space(model_space), dataset,
                      f'{real_ipc} real images per class of {dataset} (seed {seed}, {space} space)',
                      dict(kind='real', dataset=dataset, ipc=real_ipc, seed=seed))


def _test_split(dset: DistilledSet, data: str, dataset: Optional[str], loads: Dict[str, Any]) -> Tuple[str, ImageSet]:
    """``(source, test split)`` of the set's real dataset: ``dataset`` / ``root`` when given, else where the
    distillation read it (``extra['real_data']``), else ``source_dataset``; a miss names the flags to pass."""
    recorded = dset.extra.get('real_data') if isinstance(dset.extra, dict) else None
    gone = ''
    if dataset is None and loads.get('root') is None and isinstance(recorded, dict) and recorded.get('dataset'):
        try:
            return recorded['dataset'], load_dataset(recorded['dataset'], 'test', image_size=dset.image_size,
                                                     **dict(loads, root=recorded.get('root')))
        except FileNotFoundError:
            gone = f" (it was distilled from {recorded.get('root') or recorded['dataset']}, which no longer holds it)"
            _logger.warning('the real data of %s is gone%s; trying %r', data, gone, dset.source_dataset)
    source = dataset or dset.source_dataset
    try:
        return source, load_dataset(source, 'test', image_size=dset.image_size, **loads)
    except FileNotFoundError as e:
        if dataset is not None:
            raise
        raise FileNotFoundError(
            f'the test split of {source!r}, the dataset the set {data} was distilled from, was not found{gone}: '
            f'pass --dataset NAME|DIR|ZIP (the real dataset it came from) or --data-root DIR. {e}') from None


def _load_set(data: str, layout: Optional[str], dataset: Optional[str], image_space: Optional[str],
              soft_label_temperature: Optional[float], strict: bool, zca_eps: float = 0.1) -> DistilledSet:
    layout = layout or detect_layout(data)
    if layout == 'timm_dd':
        return load_distilled(data, strict=strict)
    return import_distilled(data, layout, dataset=dataset, image_space=image_space, zca_eps=zca_eps,
                            soft_label_temperature=soft_label_temperature)


def _check_classes(train_names, test_names, train_k: int, test_k: int, train_src: str, test_src: str) -> None:
    if train_k != test_k:
        raise ValueError(f'the training set ({train_src}) has {train_k} classes but the test set ({test_src}) has '
                         f'{test_k}; evaluate on the dataset the set was distilled from')
    if train_names and test_names and list(train_names) != list(test_names):
        raise ValueError(f'the classes of the training set ({train_src}) {list(train_names)} differ from the test '
                         f'set ({test_src}) classes {list(test_names)}')
