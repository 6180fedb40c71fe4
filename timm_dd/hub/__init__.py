""" Hugging Face Hub publishing for timm_dd: distilled datasets, teachers and expert trajectory buffers

* distilled sets -> dataset repos (``push_distilled`` / ``load_distilled``), layout of ``DistilledSet.save``;
  sets of other tools from a folder or a repo (``import_distilled``);
* teachers -> timm model repos (``push_teacher`` / ``load_teacher`` / ``save_teacher``; other tools' checkpoints
  through ``import_teacher``), loadable with
  ``import timm, timm_dd; timm.create_model('hf-hub:<org>/<arch>.<tag>', pretrained=True)``;
* expert buffers -> dataset repos (``push_expert_buffers`` / ``pull_expert_buffers``);
* real image datasets stored as parquet (``download_image_dataset``; ``load_dataset('hf://datasets/<owner>/<name>')``).

Every Hub failure is raised as one ``HubError`` naming the repo, revision and file. ``huggingface_hub`` is imported
lazily, on first use.
"""
from ._errors import HubError
from .buffers import pull_expert_buffers, push_expert_buffers
from .distilled import import_distilled, load_distilled, push_distilled
from .image_datasets import download_image_dataset
from .teacher import import_teacher, model_image_space, record_input, load_teacher, push_teacher, save_teacher, \
    teacher_model_card

__all__ = [
    'HubError', 'push_distilled', 'load_distilled', 'import_distilled', 'push_teacher', 'load_teacher', 'save_teacher',
    'import_teacher', 'teacher_model_card', 'record_input', 'model_image_space', 'push_expert_buffers',
    'pull_expert_buffers', 'download_image_dataset',
]
