"""DD-Ranking's scores and the parts of its protocol around single training runs.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking/metrics``) separates what a distilled set holds from what its
evaluation (soft labels, a relabelling teacher, augmentation) adds, by comparing each accuracy with the one a
random class-balanced subset of the real training set of the same size reaches under the same evaluation:

* hard-label recovery ``HLR = acc(real, hard) - acc(syn, hard)``;
* improvement over random ``IOR = acc(syn, any) - acc(rdm, any)`` ("any": the set's own evaluation, hard or soft);
* label-robust score ``LRS = (exp(a) - exp(-1)) / (e - exp(-1))`` with ``a = w * IOR - (1 - w) * HLR``;
* augmentation-robust score ``ARS``, the same normalisation of
  ``b = w * (acc(syn, aug) - acc(rdm, aug)) + (1 - w) * (acc(syn, no aug) - acc(rdm, no aug))``.

As in DD-Ranking's code, accuracies are in percent (its ``validate`` returns them so) and the scores are computed
from them as they are: the normalisation maps ``a`` in [-1, 1] to [0, 1] only for accuracies given as fractions,
which is what its documentation writes; ``accuracy_unit='fraction'`` computes that reading. Every accuracy is the
best of the evaluations every 10 epochs of the best lr in :data:`LR_GRID` (its selection rule, on the test set);
one evaluation round per seed, mean and population std (``numpy.std``) over the rounds.
"""
import math
from dataclasses import dataclass, replace
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import torch

from ..data.sets import DataSplits, ImageSet

__all__ = ['LR_GRID', 'ACCURACY_UNITS', 'search_lr', 'label_robust_score', 'augmentation_robust_score',
           'mean_std', 'with_class_labels', 'score_rounds', 'Scores']

#: the learning rates DD-Ranking searches when no lr is given (``_hyper_param_search_for_*_label``)
LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)
ACCURACY_UNITS = ('percent', 'fraction')


def search_lr(accuracies: Mapping[float, float]) -> Tuple[float, float]:
    """``(best accuracy, its lr)`` over the runs of an lr search, as DD-Ranking picks it: the grid in order, a later
    lr only when strictly better (a tie keeps the smaller lr); ``(0, 0)`` when no run beat 0."""
    best_acc, best_lr = 0.0, 0.0
    for lr in sorted(accuracies):
        if accuracies[lr] > best_acc:
            best_acc, best_lr = accuracies[lr], lr
    return best_acc, best_lr


def _normalized(x: float) -> float:
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def _scale(unit: str) -> float:
    if unit not in ACCURACY_UNITS:
        raise ValueError(f'accuracy_unit must be one of {ACCURACY_UNITS}, got {unit!r}')
    return 1.0 if unit == 'percent' else 0.01


@dataclass(frozen=True)
class Scores:
    """One evaluation round's scores (accuracies in percent)."""
    hard_label_recovery: float
    improvement_over_random: float
    label_robust_score: float


def label_robust_score(real_hard: float, syn_hard: float, syn_any: float, rdm_any: float, weight: float = 0.5,
                       accuracy_unit: str = 'percent') -> Scores:
    """DD-Ranking's ``LabelRobustScore{Hard,Soft}.compute_metrics`` for one round, from accuracies in percent;
    ``accuracy_unit='fraction'`` evaluates the exponent on fractions (the documented [0, 1] range)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f'the score weight (lrs_lambda) must be in [0, 1], got {weight}')
    hlr, ior = real_hard - syn_hard, syn_any - rdm_any
    alpha = (weight * ior - (1 - weight) * hlr) * _scale(accuracy_unit)
    return Scores(hlr, ior, _normalized(alpha))


def augmentation_robust_score(syn_aug: float, rdm_aug: float, syn_no_aug: float, rdm_no_aug: float,
                              weight: float = 0.5, accuracy_unit: str = 'percent') -> Dict[str, float]:
    """DD-Ranking's ``AugmentationRobustScore.compute_metrics`` for one round (accuracies in percent)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f'the score weight (ars_lambda) must be in [0, 1], got {weight}')
    with_aug, without_aug = syn_aug - rdm_aug, syn_no_aug - rdm_no_aug
    beta = (weight * with_aug + (1 - weight) * without_aug) * _scale(accuracy_unit)
    return {'with_aug_score': with_aug, 'without_aug_score': without_aug,
            'augmentation_robust_score': _normalized(beta)}


def mean_std(values: Iterable[float]) -> Tuple[float, float]:
    """Mean and population standard deviation (``numpy.std``, what DD-Ranking prints)."""
    values = list(values)
    if not values:
        raise ValueError('no values to average')
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def with_class_labels(splits: DataSplits, ipc: int) -> DataSplits:
    """The splits with the training images labelled by position, ``ipc`` images per class in class order, as
    DD-Ranking labels a set for its hard-label runs (whatever soft labels the set has)."""
    train: ImageSet = splits.train
    k = splits.num_classes
    if len(train) != k * ipc:
        raise ValueError(f'the set has {len(train)} images, not {ipc} per class for {k} classes: DD-Ranking labels '
                         f'a set by position (class c = images c*ipc .. (c+1)*ipc - 1); give the set\'s ipc')
    labels = torch.arange(k).repeat_interleave(ipc)
    hard = replace(train, labels=labels, num_classes=k)
    return DataSplits(hard, splits.test, splits.name, splits.description + ' (class labels by position)',
                      dict(splits.source, labels='class by position'), list(splits.notes))


def score_rounds(rounds: Sequence[Mapping[str, float]], real_hard: float, weight: float = 0.5,
                 accuracy_unit: str = 'percent') -> Dict[str, Tuple[float, float]]:
    """Mean and std of HLR, IOR and LRS over evaluation rounds, each a mapping with ``syn_hard``, ``syn_any`` and
    ``rdm_any`` accuracies (percent)."""
    scores = [label_robust_score(real_hard, r['syn_hard'], r['syn_any'], r['rdm_any'], weight, accuracy_unit)
              for r in rounds]
    return {'hard_label_recovery': mean_std(s.hard_label_recovery for s in scores),
            'improvement_over_random': mean_std(s.improvement_over_random for s in scores),
            'label_robust_score': mean_std(s.label_robust_score for s in scores)}
