"""Plots of cross-architecture experiments: accuracy bars per network (one run, or several recipes side by side)
and the keep-rate / learning-rate schedules."""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .._optional import require
from ..io import atomic_write, atomic_write_with
from .config import TrainConfig
from .report import _as_dict, data_label, load_results, merge_results, teacher_summary

__all__ = ['plot_results', 'plot_comparison', 'plot_schedules', 'write_report']

# one colour per recipe, the same in every panel (colour-blind safe: Okabe-Ito)
_COLORS = ('#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442', '#999999')
_TEACHER_STYLES = ('--', ':', '-.')


def _pyplot():
    matplotlib = require('matplotlib', 'plots', 'plotting results')
    matplotlib.use('Agg')  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Union[str, os.PathLike]) -> Path:
    return atomic_write_with(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches='tight', format='png'))


# a bar: (mean, std, runs); a series: (recipe, {network: bar}); a teacher line: (label, mean)
Bar = Tuple[float, float, int]


def _bar_panel(ax, series: List[Tuple[str, Dict[str, Bar]]], teachers: List[Tuple[str, float]],
               colors: Dict[str, str], title: str) -> None:
    """Grouped bars: one group per network, the recipes that trained it side by side (centred in the group), the
    final accuracy written on each bar, error bars for several seeds, teachers as horizontal lines."""
    networks = list(dict.fromkeys(n for _, bars in series for n in bars))
    width = min(0.8 / max(1, len(series)), 0.32)
    for g, net in enumerate(networks):
        present = [(recipe, bars[net]) for recipe, bars in series if net in bars]
        for j, (recipe, (mean, std, runs)) in enumerate(present):
            x = g + (j - (len(present) - 1) / 2) * width
            ax.bar(x, 100 * mean, width * 0.92, color=colors[recipe], label=recipe,
                   yerr=100 * std if runs > 1 else None, capsize=3, ecolor='#333333')
            top = 100 * (mean + (std if runs > 1 else 0))
            ax.text(x, top + 1.5, f'{100 * mean:.1f}', ha='center', va='bottom', fontsize=7,
                    bbox=dict(facecolor='white', edgecolor='none', pad=0.6))
    for k, (name, value) in enumerate(teachers):  # the value beside the panel's right edge, at the line's height
        ls = _TEACHER_STYLES[k % len(_TEACHER_STYLES)]
        ax.axhline(100 * value, color='#222222', lw=1, ls=ls, label=name)
        ax.text(1.01, 100 * value, f'{100 * value:.1f}', transform=ax.get_yaxis_transform(), ha='left',
                va='center', fontsize=7)
    ax.set_xticks(range(len(networks)), networks, fontsize=8)
    ax.set_xlim(-0.6, len(networks) - 0.4)
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.grid(axis='y', color='#dddddd', lw=0.6)
    ax.set_axisbelow(True)
    for side in ('top', 'right'):
        ax.spines[side].set_visible(False)


def _series(results: List[Dict[str, Any]]) -> List[Tuple[str, Dict[str, Bar]]]:
    out: Dict[str, Dict[str, Bar]] = {}
    for r in results:
        bars = out.setdefault(r['config']['recipe'], {})
        for row in r['table']:
            bars[row['model']] = (row['final_mean'], row['final_std'], row['runs'])
    return list(out.items())


def _teachers(results: List[Dict[str, Any]]) -> List[Tuple[str, float]]:
    lines = {}
    for r in results:
        t = teacher_summary(r)
        if t is not None:
            name, mean, _, _ = t
            lines.setdefault(f'teacher {name} ({r["config"]["recipe"]})', mean)
    return list(lines.items())


def _figure(panels: List[Tuple[str, List[Dict[str, Any]]]], path, suptitle: Optional[str] = None) -> Path:
    plt = _pyplot()
    recipes = list(dict.fromkeys(r['config']['recipe'] for _, rs in panels for r in rs))
    colors = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(recipes)}
    widths = [max(1, len({row['model'] for r in rs for row in r['table']})) for _, rs in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + 1.6 * sum(widths) + 0.4 * len(panels), 3.4), sharey=True,
                             squeeze=False, gridspec_kw={'width_ratios': widths})
    for ax, (title, rs) in zip(axes[0], panels):
        _bar_panel(ax, _series(rs), _teachers(rs), colors, title)
    several = any(row['runs'] > 1 for _, rs in panels for r in rs for row in r['table'])
    axes[0][0].set_ylabel('final test top-1 (%)' + ('\nmean ± std over seeds' if several else ''))
    handles, labels = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.tight_layout(w_pad=2.5)
    fig.legend([handles[lab] for lab in labels], labels, loc='upper left', bbox_to_anchor=(1.0, 0.9), fontsize=8,
               frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_results(result: Any, path: Union[str, os.PathLike]) -> Path:
    """``results.png`` of one ``train.py`` run: the final accuracy per network (value on each bar, mean ± std over
    seeds), the teacher as a horizontal line, the legend beside the axes. ``result`` is an ``ExperimentResult`` or
    its ``results.json`` dict; a list of them (several recipes on the same data) puts the recipes side by side."""
    results = [_as_dict(r) for r in (result if isinstance(result, (list, tuple)) else [result])]
    recipes = ' vs '.join(dict.fromkeys(r['config']['recipe'] for r in results))
    title = f"{recipes} on {data_label(results[0]['data'])}"
    return _figure([(title, results)], path)


def plot_comparison(result_dirs: Sequence[Union[str, os.PathLike, Dict[str, Any]]],
                    path: Union[str, os.PathLike]) -> Path:
    """Recipes (e.g. ``baseline`` vs ``dpkd``) side by side per network, one panel per training data (e.g. real
    images vs the distilled set), from several ``train.py`` output folders (or their loaded results)."""
    results = [r if isinstance(r, dict) else load_results(r) for r in result_dirs]
    if not results:
        raise ValueError('plot_comparison needs at least one result folder')
    panels: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        panels.setdefault(data_label(r['data']), []).append(r)
    return _figure(list(panels.items()), path)


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


def write_report(dirs: Sequence[Union[str, os.PathLike]], markdown: Union[str, os.PathLike],
                 figure: Optional[Union[str, os.PathLike]] = None) -> str:
    """Write the merged table of ``dirs`` to ``markdown`` and (if given) the comparison figure (recipes side by
    side per network, one panel per training data; see :func:`timm_dd.train.plots.plot_comparison`) to
    ``figure``; return the markdown. Needs matplotlib for the figure (the ``plots`` extra)."""
    text = merge_results(dirs)
    if figure is not None:
        plot_comparison(dirs, figure)
        text += f'\n![recipes per network]({os.path.relpath(figure, Path(markdown).parent)})\n'
    with atomic_write(Path(markdown), 'w') as f:
        f.write(text)
    return text
