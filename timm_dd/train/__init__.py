"""Training on small (distilled or real-subset) sets: recipes, the training loop, one network, several networks x
seeds into one cross-architecture table.

Experiments: :func:`prepare_data` then :func:`run_experiment` (what ``train.py`` calls), with a recipe
(:func:`load_config` -> :class:`TrainConfig`). One network: :func:`train_model`. The loop itself, for new
trainers: :func:`fit` with :class:`Hook` s, :func:`evaluate`.
"""
from .config import TrainConfig, load_config
from .experiment import ExperimentResult, format_table, run_experiment
from .loop import Hook, evaluate, fit
from .networks import create_student
from .prepare import prepare_data
from .trainer import RunResult, train_model

__all__ = [
    'TrainConfig', 'load_config', 'ExperimentResult', 'format_table', 'run_experiment', 'Hook', 'evaluate', 'fit',
    'create_student', 'prepare_data', 'RunResult', 'train_model',
]
