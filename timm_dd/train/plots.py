"""Plots of a cross-architecture experiment: accuracy bars and the keep-rate / learning-rate schedules."""
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_with
from .config import TrainConfig
from .experiment import ExperimentResult

__all__ = ['plot_results', 'plot_schedules']


def _pyplot():
    from .._optional import require
    matplotlib = require('matplotlib', 'plots', 'plotting results')
    matplotlib.use('Agg')  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches='tight', format='png'))


def plot_results(result: ExperimentResult, path: Path) -> Path:
    """Bars of the final accuracy (mean +- std over seeds), dots of the best over evaluations, teacher line."""
    plt = _pyplot()
    rows = result.table
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    xs = range(len(rows))
    ax.bar(xs, [100 * r['final_mean'] for r in rows], yerr=[100 * r['final_std'] for r in rows], capsize=4,
           color='#4C72B0', label='final (mean ± std)')
    ax.scatter(xs, [100 * r['best_mean'] for r in rows], color='#DD8452', zorder=3, label='best over evaluations')
    if result.teacher_runs:
        teacher = sum(r['final_acc'] for r in result.teacher_runs) / len(result.teacher_runs)
        ax.axhline(100 * teacher, color='k', ls='--', lw=1, label=f"teacher {result.teacher_runs[0]['model']}")
    ax.set_xticks(list(xs), [r['model'] for r in rows], rotation=20)
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(f"recipe {result.config['recipe']}: {result.data.get('description', '')}", fontsize=8)
    ax.legend(fontsize=7, loc='lower right')
    ax.set_ylim(0, 100)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_schedules(cfg: TrainConfig, models: Sequence[str], path: Path, iters_per_epoch: int = 1) -> Path:
    """Keep rate per epoch (per network, ResNet50 uses a lower p_min) and learning rate per epoch."""
    plt = _pyplot()
    fig, (ax_p, ax_lr) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    epochs = list(range(cfg.epochs))
    for name in dict.fromkeys(['resnet50' if 'resnet50' in m else 'default' for m in models]):
        schedule = cfg.keep_rate_schedule(name if name != 'default' else '')
        ax_p.step(epochs, [schedule(e) for e in epochs], where='post', label=f'keep rate ({name})')
    ax_p.set_ylabel('keep rate p')
    ax_p.set_ylim(0, 1.05)
    ax_p.legend(fontsize=7)
    trace = cfg.lr_schedule_fn().trace(iters_per_epoch)
    ax_lr.plot(epochs, trace)
    ax_lr.set_ylabel('lr / peak lr')
    ax_lr.set_xlabel('epoch')
    ax_p.set_title(f"recipe {cfg.recipe}: lr schedule '{cfg.lr_schedule}'", fontsize=9)
    path = _save(fig, path)
    plt.close(fig)
    return path
