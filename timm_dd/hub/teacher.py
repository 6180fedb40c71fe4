""" Teacher models on the Hugging Face Hub, through timm's own mechanism

Teachers are ordinary timm model repos (``config.json`` + ``model.safetensors`` + ``README.md``) written by
``timm.models.push_to_hf_hub`` / ``save_for_hf``, so they load with plain timm::

    import timm, timm_dd  # the timm_dd import registers its architectures with timm
    model = timm.create_model('hf-hub:dd-org/convnet3.dm_cifar10', pretrained=True)

``config.json`` stores the architecture name and the creation kwargs (``model_args``); loading without
``import timm_dd`` fails with ``RuntimeError: Unknown model``. Repo naming follows timm: ``<org>/<arch>.<tag>``.
"""
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import HfApi, hf_hub_download
from timm.models import push_to_hf_hub, save_for_hf
from timm.models._hub import generate_readme

from ..io import atomic_folder, atomic_write, check_replaceable, read_torch_file
from ..models import describe_input
from ._errors import HubError, hub_error, with_retries
from ._repo import prepare_repo, split_source

__all__ = ['push_teacher', 'load_teacher', 'save_teacher', 'import_teacher', 'record_input', 'model_image_space',
           'teacher_model_card']

_logger = logging.getLogger(__name__)

# what timm's save_for_hf writes (safetensors) plus the card: a folder holding anything else is not replaced
TEACHER_FILES = ('config.json', 'model.safetensors', 'README.md')


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture')
    if not arch:
        raise ValueError('The model has no pretrained_cfg["architecture"]: create it with timm.create_model().')
    return arch


def teacher_model_card(
        model: nn.Module,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        folder: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, Any]:
    """The ``model_card`` dict for timm's ``push_to_hf_hub``/``generate_readme``.

    Args:
        model: the teacher.
        repo_id: Hub repo the card describes (the usage snippet loads ``hf-hub:<repo_id>``).
        dataset: training dataset, e.g. ``'cifar10'`` (becomes the card's ``datasets:`` entry).
        folder: local folder used in the usage snippet when there is no ``repo_id``.
    """
    arch = _architecture(model)
    source = f'hf-hub:{repo_id}' if repo_id else f'local-dir:{folder or "path/to/folder"}'
    num_params = sum(p.numel() for p in model.parameters())
    details: Dict[str, Any] = {
        'Model Type': 'Image classification / dataset distillation teacher',
        'Architecture': f'`{arch}` (registered by `timm_dd`)',
        'Params (M)': f'{num_params / 1e6:.3f}',
        'Input size': 'x'.join(str(s) for s in model.pretrained_cfg.get('input_size', ())),
        'Num classes': getattr(model, 'num_classes', None),
    }
    if dataset:
        details['Dataset'] = dataset
    usage = (
        '```python\n'
        'import timm, timm_dd  # the timm_dd import registers its architectures with timm\n\n'
        f"model = timm.create_model('{source}', pretrained=True).eval()\n"
        '```\n\n'
        f'`{arch}` is not a timm architecture: it is registered with timm by `import timm_dd`. Without that import '
        f'`timm.create_model` fails with `RuntimeError: Unknown model ({arch})`. '
        'Equivalently: `timm_dd.hub.load_teacher(...)`.\n'
    )
    return dict(
        tags=['image-classification', 'timm', 'timm_dd', 'dataset-distillation'],
        license='apache-2.0',
        description=(
            f'A `{arch}` classifier{f" trained on {dataset}" if dataset else ""}, published with `timm_dd` as a '
            'teacher / evaluation model for dataset distillation.'),
        details=details,
        usage=usage,
    )


def _model_config(class_names: Optional[Sequence[str]], model: Optional[nn.Module] = None) -> Optional[Dict[str, Any]]:
    config: Dict[str, Any] = {'label_names': list(class_names)} if class_names else {}
    if getattr(model, 'image_space', None):
        config['image_space'] = dict(model.image_space)  # what record_input stored: normalized or ZCA, and of what
    return config or None


def _check_model_args(model: nn.Module, model_args: Optional[Dict[str, Any]]) -> None:
    if model_args is None and not getattr(model, '_model_args', None):
        # timm < 1.0.30 does not record creation kwargs: config.json would rebuild the default architecture
        _logger.warning(
            'No model_args given and this timm version does not record them: pass the creation kwargs '
            '(e.g. num_classes, width, norm, img_size) so that the same architecture is rebuilt on load.')


def record_input(model: nn.Module, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 image_space: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Write the data a teacher was trained on into its ``pretrained_cfg`` before it is saved or pushed.

    ``input_size`` and ``num_classes`` come from the model itself; ``mean``/``std`` are the training data's
    normalization (ZCA data: the statistics of the [0, 1] pixels the ZCA was fitted on); ``image_space`` (e.g.
    ``{'kind': 'zca', 'source': 'cifar10', 'eps': 0.1}``) lets a downloaded teacher be checked against a set.
    """
    describe_input(model)
    cfg = dict(model.pretrained_cfg)
    if mean is not None:
        cfg['mean'] = tuple(float(m) for m in mean)
    if std is not None:
        cfg['std'] = tuple(float(v) for v in std)
    model.pretrained_cfg = cfg
    if image_space is not None:  # not a timm PretrainedCfg field: saved at the top of config.json
        model.image_space = dict(image_space)
    return model


def save_teacher(
        model: nn.Module,
        folder: Union[str, os.PathLike],
        class_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
) -> Path:
    """Write a teacher in timm's Hub layout to a local folder (offline; load with ``load_teacher(folder)``).

    Args:
        model: a model created with ``timm.create_model``.
        folder: output folder (created).
        class_names: class names, stored as ``label_names`` in ``config.json``.
        dataset: training dataset name, for the model card.
        model_args: creation kwargs needed to rebuild the architecture (e.g. ``num_classes``, ``width``).
        repo_id: repo the folder will be uploaded to, for the card's usage snippet.

    Returns:
        The folder (``config.json``, ``model.safetensors``, ``README.md``).
    """
    folder = Path(folder)
    _check_model_args(model, model_args)
    describe_input(model)  # input_size / num_classes of this model, whatever was recorded before
    card = teacher_model_card(model, repo_id=repo_id, dataset=dataset, folder=folder)
    name = repo_id.split('/')[-1] if repo_id else folder.name
    check_replaceable(folder, TEACHER_FILES, 'teacher')
    with atomic_folder(folder) as tmp:  # timm writes the files; the folder appears complete or not at all
        save_for_hf(model, str(tmp), model_config=_model_config(class_names, model), model_args=model_args,
                    safe_serialization=True)
        with atomic_write(tmp / 'README.md', 'w') as f:
            f.write(generate_readme(card, name))
    return folder


def push_teacher(
        model: nn.Module,
        repo_id: str,
        class_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        token: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
        commit_message: str = 'Add model',
) -> str:
    """Publish a teacher with ``timm.models.push_to_hf_hub`` (safetensors only, timm_dd model card).

    The model card is written only if the repo has no ``README.md`` yet (timm's behaviour); weights and
    ``config.json`` are replaced.

    Args:
        model: a model created with ``timm.create_model``.
        repo_id: ``<org>/<arch>.<tag>``, e.g. ``'dd-org/convnet3.dm_cifar10'``.
        class_names: class names, stored as ``label_names`` in ``config.json``.
        dataset: training dataset name, for the model card.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created if missing); default branch if None.
        token: Hub token; defaults to ``HF_TOKEN`` / the stored login.
        model_args: creation kwargs needed to rebuild the architecture (``num_classes``, ``in_chans``, ``img_size``,
            ``norm``, ...). timm >= 1.0.30 records them itself; given values take precedence.
        commit_message: commit summary.

    Returns:
        The commit (``CommitInfo``: a ``str`` holding the commit url, ``.oid`` is the sha).

    Raises:
        HubError: the Hub refused or could not be reached.
    """
    _check_model_args(model, model_args)
    describe_input(model)
    card = teacher_model_card(model, repo_id=repo_id, dataset=dataset)

    def push() -> str:
        target = prepare_repo(HfApi(token=token), repo_id, 'model', private, revision)
        return push_to_hf_hub(
            model,
            target,
            commit_message=commit_message,
            token=token,
            revision=revision,
            private=private,
            model_config=_model_config(class_names, model),
            model_card=card,
            model_args=model_args,
            safe_serialization=True,
        )

    commit = with_retries(push, 'push teacher to', repo_id, 'model', revision, write=True)
    _logger.info(f'Pushed teacher {_architecture(model)!r} to model repo {repo_id!r}: {commit}')
    return commit


def model_image_space(repo_or_path: Union[str, os.PathLike],
                      revision: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The image space a saved or pushed model records in its ``config.json`` (see :func:`record_input`), or
    ``None`` when it records none."""
    folder, repo_id = split_source(repo_or_path)
    if folder is not None:
        path = Path(folder) / 'config.json'
    else:
        path = Path(with_retries(lambda: hf_hub_download(repo_id, 'config.json', revision=revision),
                                 'read the config of', repo_id, 'model', revision))
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get('image_space')


def load_teacher(
        repo_or_path: Union[str, os.PathLike],
        revision: Optional[str] = None,
        pretrained: bool = True,
        **kwargs,
) -> nn.Module:
    """Create a teacher from a Hub model repo or a local folder written by ``save_teacher``/``save_for_hf``.

    Same as ``timm.create_model('hf-hub:<repo>[@<revision>]', pretrained=True, **kwargs)`` (or ``local-dir:``), with
    Hub errors turned into ``HubError``. Private repos use ``HF_TOKEN`` / the stored login (timm takes no token).

    Args:
        repo_or_path: ``<org>/<name>`` (or ``hf-hub:<org>/<name>``), or a folder (or ``local-dir:<folder>``).
        revision: branch, tag or commit sha of the Hub repo.
        pretrained: load the weights (False: only the architecture and its config).
        **kwargs: passed to ``timm.create_model`` (e.g. ``num_classes`` to re-head the teacher, ``device``).

    Returns:
        The model (in train mode, like ``timm.create_model``).

    Raises:
        HubError: repo, revision or weights not found, no permission, offline with nothing cached, or an
            architecture that is not registered with timm.
    """
    folder, repo_id = split_source(repo_or_path)
    if folder is not None:
        if revision is not None:
            raise ValueError('revision= only applies to Hub repos, not to local folders.')
        if not (folder / 'config.json').is_file():
            raise FileNotFoundError(
                f'{str(folder)!r} is not a timm model folder (no config.json); write one with save_teacher().')
        name, source = f'local-dir:{folder}', str(folder)
    else:
        name, source = f'hf-hub:{repo_id}' + (f'@{revision}' if revision else ''), repo_id
    try:
        if repo_id is None:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        return with_retries(lambda: timm.create_model(name, pretrained=pretrained, **kwargs), 'load teacher from',
                            repo_id, 'model', revision)
    except RuntimeError as e:
        if not str(e).startswith('Unknown model'):
            raise
        arch = str(e)[len('Unknown model'):].strip(' ()')
        raise HubError(
            f'Cannot load teacher from {source!r}: its config.json names architecture {arch!r}, which is not '
            'registered with timm. Import the package that defines it (timm_dd registers its own models on '
            '`import timm_dd`) or upgrade timm.', repo_id, 'model', revision) from None
    except Exception as e:
        if repo_id is None:
            raise
        err = hub_error(e, 'load teacher from', repo_id, 'model', revision)
        if err is None:
            raise
        raise err from None


def import_teacher(checkpoint: Union[str, os.PathLike], model_name: str, **model_args: Any) -> nn.Module:
    """A network saved by another tool's training script, as the timm_dd model ``model_name``.

    Reads a ``torch.save`` of a state dict, or of ``{'state_dict': ..., 'epoch': ...}`` as the DP+KD code (Zhong &
    Liu, "Towards Mitigating Architecture Overfitting on Distilled Datasets") writes its ``checkpoint_best.pth``
    teachers; a ``module.`` prefix (DataParallel) is dropped. Tensors only (``weights_only``): no pickled code runs.
    Its released MTT teachers are ``import_teacher(path, 'convnet3', num_classes=10)`` (instance norm).
    Record the data it was trained on with :func:`record_input` before :func:`save_teacher`, so that a training
    run can check the teacher against its images.

    Raises:
        ValueError: the file holds no state dict, or one whose names or shapes do not fit ``model_name`` with
            ``model_args`` (the message lists them, e.g. a batch-norm checkpoint given an instance-norm model).
    """
    path = Path(checkpoint)
    obj = read_torch_file(path)
    state = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path}: holds no state dict (a dict of tensors, or {{"state_dict": ...}})')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    model = timm.create_model(model_name, **model_args)
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}' for k in sorted(set(ours) & set(state))
              if state[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        what = '; '.join(f'{name}: {", ".join(keys[:4])}{" ..." if len(keys) > 4 else ""}' for name, keys in
                         (('missing', missing), ('unexpected', unexpected), ('shapes (file vs model)', shapes))
                         if keys)
        raise ValueError(f'{path} does not fit {model_name} {model_args or ""} ({what}); give the architecture and '
                         f'keywords (norm, width, num_classes) it was trained with')
    model.load_state_dict(state)
    return model
