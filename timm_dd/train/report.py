"""Results tables of ``train.py`` runs: one renderer for a single run (``results.md``) and for several merged.

Every table has the same columns: the recipe, the training data (a short label such as ``10 real/class digits``
or ``att distilled ipc 10``), the network, the number of runs (seeds), the final test accuracy (the primary
number), the best over the periodic evaluations (labelled: it selects on the test set), the gap to the teacher and
the training throughput. Beside the final test accuracy stands the accuracy on the (un-augmented) training images
in eval mode after the last epoch: far below 100 % on a tiny training set, it flags a run too short for its
batch-norm statistics (see ``--recompute-bn``). One seed prints its value; several print mean ± std. Notes a run
recorded (a schedule much shorter than its recipe's) follow the settings.
"""
import json
import os
import statistics
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ['format_table', 'merge_results', 'load_results', 'data_label', 'format_accuracy', 'format_accuracies']

HEADER = ('| recipe | data | network | runs | final top-1 (%) | train set, eval mode (%) | best over evaluations (%) '
          '| gap to teacher (pts) | train img/s |')
RULE = '|---' * HEADER.count(' | ') + '|---|'


def load_results(result_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``results.json`` of a ``train.py`` output folder, as a dict."""
    path = Path(result_dir) / 'results.json'
    if not path.is_file():
        raise FileNotFoundError(f'{result_dir} holds no results.json: not a finished timm-dd-train (train.py) '
                                f'output folder')
    return json.loads(path.read_text())


def _as_dict(result: Any) -> Dict[str, Any]:
    return asdict(result) if is_dataclass(result) else dict(result)


def _short_name(dataset: Any) -> str:
    s = str(dataset)
    if '/' in s or os.sep in s:  # a folder or an archive: its name (a split archive: its folder's)
        p = Path(s)
        return p.parent.name if p.stem in ('train', 'test') else (p.stem if p.suffix == '.zip' else p.name)
    return s


def data_label(data: Dict[str, Any]) -> str:
    """A short name of the training data of a run: ``'10 real/class digits'``, ``'att distilled ipc 10'``."""
    kind = data.get('kind')
    if kind == 'real':
        ipc = data.get('ipc')
        name = _short_name(data.get('dataset', '?'))
        label = f'all real {name}' if isinstance(ipc, int) and ipc < 0 else f'{ipc} real/class {name}'
    elif kind == 'distilled':
        label = f"{str(data.get('method', '?')).lower()} distilled ipc {data.get('ipc', '?')}"
    else:
        return str(data.get('description') or '?')
    return label + (' (zca)' if data.get('image_space') == 'zca' else '')


def format_accuracy(mean: float, std: float, runs: int, digits: int = 2) -> str:
    """Percent with ``digits`` decimals; ``mean ± std`` only when there are several runs."""
    return f'{100 * mean:.{digits}f}' if runs <= 1 else f'{100 * mean:.{digits}f} ± {100 * std:.{digits}f}'


def format_accuracies(values: Sequence[float], digits: int = 2) -> str:
    """:func:`format_accuracy` of the mean and sample standard deviation of ``values``."""
    return format_accuracy(*_mean_std(values), len(values), digits)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def teacher_summary(result: Dict[str, Any]) -> Optional[Tuple[str, float, float, int]]:
    """``(teacher model, mean, std, runs)`` of a result's teachers, or ``None``."""
    teachers = result.get('teacher_runs') or []
    if not teachers:
        return None
    mean, std = _mean_std([r['final_acc'] for r in teachers])
    return teachers[0]['model'], mean, std, len(teachers)


def _settings(result: Dict[str, Any]) -> str:
    cfg = result['config']
    return (f"Recipe `{cfg['recipe']}` on {result['data'].get('description', '')}; {cfg['epochs']} epochs, opt "
            f"{cfg['opt']}, lr schedule {cfg['lr_schedule']}, DropPath {'on' if cfg['drop_path'] else 'off'}, "
            f"KD {'on' if cfg['kd'] else 'off'}, DSA k={cfg['dsa_k'] if cfg['dsa'] else 0}, "
            f"ELF {'on' if cfg.get('elf') else 'off'}{_ddranking_parts(cfg)}.")


def _ddranking_parts(cfg: Dict[str, Any]) -> str:
    """The settings of DD-Ranking's evaluations, said only where a recipe uses them (older results lack them)."""
    parts = []
    if cfg.get('relabel'):
        parts.append('labels from a relabelling teacher')
    if cfg.get('cutmix_beta') is not None:
        parts.append(f"CutMix beta {cfg['cutmix_beta']:g}")
    if cfg.get('soft_loss', 'ce') != 'ce':
        parts.append(f"soft loss {cfg['soft_loss']} at T {cfg.get('soft_label_temperature')}"
                     + (' x T^2' if cfg.get('soft_loss_t2') else ''))
    return ''.join(f', {p}' for p in parts)


def _rows(result: Dict[str, Any]) -> List[str]:
    recipe, data = result['config']['recipe'], data_label(result['data'])
    lines = []
    teacher = teacher_summary(result)
    if teacher is not None:
        name, mean, std, n = teacher
        train = _train_accuracy(result.get('teacher_runs') or [])
        lines.append(f'| {recipe} | {data} | teacher {name} | {n} | {format_accuracy(mean, std, n)} | {train} | - | - '
                     f'| - |')
    for row in result['table']:
        gap = f"{100 * row['gap_to_teacher']:+.2f}" if row.get('gap_to_teacher') is not None else '-'
        ips = f"{row['images_per_second']:.0f}" if row.get('images_per_second') else '-'
        n = row['runs']
        train = _train_accuracy([r for r in result.get('runs') or [] if r.get('model') == row['model']])
        lines.append(f"| {recipe} | {data} | {row['model']} | {n} | "
                     f"{format_accuracy(row['final_mean'], row['final_std'], n)} | {train} | "
                     f"{format_accuracy(row['best_mean'], row['best_std'], n)} | {gap} | {ips} |")
    return lines


def _train_accuracy(runs: List[Dict[str, Any]]) -> str:
    values = [r['train_acc'] for r in runs if r.get('train_acc') is not None]
    if not values or len(values) != len(runs):
        return '-'
    return format_accuracies(values)


def format_table(results: Any) -> str:
    """The markdown table of one result (an ``ExperimentResult`` or its ``results.json`` dict) or of several.

    One result: its settings as a caption, then the table. Several: one table (rows in the given order), then one
    line of settings per result.
    """
    many = isinstance(results, (list, tuple))
    results = [_as_dict(r) for r in (results if many else [results])]
    table = [HEADER, RULE]
    for r in results:
        table += _rows(r)
    if not many:
        return '\n'.join([_settings(results[0]), *_notes(results[0]), ''] + table) + '\n'
    notes = list(dict.fromkeys(note for r in results for note in _notes(r)))  # each once, in order
    return '\n'.join(table + [''] + [f'- {_settings(r)}' for r in results] + notes) + '\n'


def _notes(result: Dict[str, Any]) -> List[str]:
    return [f'> **Note:** {note}' for note in result.get('notes') or []]


def merge_results(dirs: Sequence[Union[str, os.PathLike]]) -> str:
    """One markdown table over the ``results.json`` of several ``train.py`` output folders."""
    return format_table([load_results(d) for d in dirs])
