"""timm_dd's DD-Ranking scores against DD-Ranking's own code, for the same accuracies, in one run.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking) is imported at run time from a local checkout (``--ddranking``, the folder
holding its ``ddranking`` package; never vendored; needs its dependencies, e.g. ``pip install kornia pandas``). Its
three score classes (``LabelRobustScoreHard``, ``LabelRobustScoreSoft``, ``AugmentationRobustScore``) run their own
``compute_metrics`` with their training helpers replaced by functions returning given accuracies, so what is
compared is everything after the training: the lr-search selection is ours alone (tested in
``tests/test_ddranking.py``), the score formulas, averaging and printing are both sides'. Accuracies: ``--rounds``
evaluation rounds drawn with a seeded generator over ``--cases`` cases (plus edge cases: a set below random, a
perfect recovery), in the ranges real sets reach. The scores must agree to the printed precision (``%.2f``) and to float rounding.

Usage::

    python benchmarks/check_ddranking_scores.py --ddranking carry/DD-Ranking [--cases 200] [--rounds 5] \\
        [--out benchmarks/results/ddranking_scores.json]
"""
import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timm_dd.train.ddranking import augmentation_robust_score, label_robust_score, mean_std  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ddranking', required=True, help='a local DD-Ranking checkout (the folder holding ddranking/)')
    p.add_argument('--cases', type=int, default=200)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'ddranking_scores.json'))
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.ddranking).resolve()))
    import numpy as np
    from ddranking.metrics import aug_robust, hard_label, soft_label
    for module in (hard_label, soft_label, aug_robust):
        module.save_results = lambda results, path: None  # its CSV writer fails on LRS-hard's doubled list
        module.logging = lambda *a, **k: None
    rng = random.Random(0)
    cases = [[_accuracies(rng) for _ in range(args.rounds)] for _ in range(args.cases)]
    cases.append([dict(real=84.0, syn_hard=20.0, rdm_hard=25.0, syn_any=18.0, rdm_any=30.0, syn_naug=15.0,
                       rdm_naug=25.0)] * 2)
    cases.append([dict(real=50.0, syn_hard=50.0, rdm_hard=49.0, syn_any=52.0, rdm_any=51.0, syn_naug=49.0,
                       rdm_naug=48.0)])
    worst = {'lrs_hard': 0.0, 'lrs_soft': 0.0, 'ars': 0.0}
    printed_mismatches = 0
    for rounds in cases:
        real = rounds[0]['real']
        for r in rounds:
            r['real'] = real  # one real accuracy per case (DD-Ranking's cache or its one full-data training)
        ours_hard = [label_robust_score(real, r['syn_hard'], r['syn_hard'], r['rdm_hard']) for r in rounds]
        ours_soft = [label_robust_score(real, r['syn_hard'], r['syn_any'], r['rdm_any']) for r in rounds]
        ours_ars = [augmentation_robust_score(r['syn_any'], r['rdm_any'], r['syn_naug'], r['rdm_naug'])
                    for r in rounds]
        theirs_hard = _their_scores(hard_label.LabelRobustScoreHard, rounds, 'hard')
        theirs_soft = _their_scores(soft_label.LabelRobustScoreSoft, rounds, 'soft')
        theirs_ars = _their_scores(aug_robust.AugmentationRobustScore, rounds, 'ars')
        pairs = [('lrs_hard', mean_std(s.label_robust_score for s in ours_hard), theirs_hard,
                  'label_robust_score'),
                 ('lrs_soft', mean_std(s.label_robust_score for s in ours_soft), theirs_soft, 'label_robust_score'),
                 ('ars', mean_std(a['augmentation_robust_score'] for a in ours_ars), theirs_ars,
                  'augmentation_robust_score')]
        for name, (mean, std), theirs, key in pairs:
            diff = max(abs(mean - theirs[f'{key}_mean']), abs(std - theirs[f'{key}_std']))
            scale = max(1.0, abs(theirs[f'{key}_mean']))
            worst[name] = max(worst[name], float(diff / scale))
            printed_mismatches += int(f'{mean:.2f}' != f"{theirs[f'{key}_mean']:.2f}") + (
                f'{std:.2f}' != f"{theirs[f'{key}_std']:.2f}")
        for ours, theirs in ((ours_hard, theirs_hard), (ours_soft, theirs_soft)):
            for key, attr in (('hard_label_recovery', 'hard_label_recovery'),
                              ('improvement_over_random', 'improvement_over_random')):
                values = [getattr(s, attr) for s in ours]
                assert np.isclose(mean_std(values)[0], theirs[f'{key}_mean'], rtol=1e-12, atol=1e-12)
    result = dict(cases=len(cases), rounds=args.rounds, ddranking=str(args.ddranking),
                  worst_relative_difference=worst, printed_mismatches=printed_mismatches,
                  agree=bool(printed_mismatches == 0 and max(worst.values()) < 1e-9))
    print(json.dumps(result, indent=2))
    from timm_dd.io import atomic_write_json
    atomic_write_json(Path(args.out), result, indent=2)
    return 0 if result['agree'] else 1


def _accuracies(rng: random.Random) -> Dict[str, float]:
    """One round's accuracies (%) in the ranges sets reach: the set under the real data, set and random subset
    within 30 points of each other (beyond, the percent-scaled exponent overflows every printed digit)."""
    real = rng.uniform(50, 90)
    syn_hard, syn_any, syn_naug = real - rng.uniform(0, 50), rng.uniform(10, 90), rng.uniform(10, 90)
    return dict(real=real, syn_hard=syn_hard, rdm_hard=syn_hard - rng.uniform(-15, 30), syn_any=syn_any,
                rdm_any=syn_any - rng.uniform(-15, 30), syn_naug=syn_naug, rdm_naug=syn_naug - rng.uniform(-15, 30))


def _their_scores(cls, rounds: List[Dict[str, float]], kind: str) -> Dict[str, float]:
    """DD-Ranking's ``cls.compute_metrics`` with each training helper answering from the current round: a call with
    the synthetic images (``image_tensor`` given) is the set's, one without is the random subset's (whose tensors its
    ``_get_random_data_helper`` returns), ``mode='real'`` the whole real set's; the first helper starts a round."""
    obj = cls.__new__(cls)  # no __init__: it would load datasets and teachers
    obj.num_eval, obj.use_dist, obj.rank, obj.ipc, obj.num_classes = len(rounds), False, 0, 1, 2
    obj.eval_full_data, obj.soft_label_mode, obj.label_type = True, 'M', 'soft'
    obj.save_path = str(Path(tempfile.mkdtemp()) / 'scores.csv')
    state = {'round': -1}

    def answer(syn_key: str, rdm_key: str, starts_round: bool = False):
        def helper(image_tensor=None, mode='syn', **kwargs):
            if mode == 'real':
                return rounds[state['round']]['real'], 0.01
            if starts_round and image_tensor is not None:
                state['round'] += 1
            return rounds[state['round']][syn_key if image_tensor is not None else rdm_key], 0.01
        return helper

    if kind == 'hard':
        obj._compute_hard_label_metrics_helper = answer('syn_hard', 'rdm_hard', starts_round=True)
    elif kind == 'soft':
        obj._compute_hard_label_metrics_helper = answer('syn_hard', 'syn_hard', starts_round=True)
        obj._compute_soft_label_metrics_helper = answer('syn_any', 'rdm_any')
    else:
        obj._compute_with_aug_metrics_helper = answer('syn_any', 'rdm_any', starts_round=True)
        obj._compute_without_aug_metrics_helper = answer('syn_naug', 'rdm_naug')
    obj._get_random_data_helper = lambda eval_iter: (None,) * (4 if kind == 'ars' else 3)
    with contextlib.redirect_stdout(io.StringIO()):
        return obj.compute_metrics(image_tensor=object(), syn_lr=None)


if __name__ == '__main__':
    sys.exit(main())
