"""Merge the results of several ``train.py`` runs into one table."""
import json
from pathlib import Path
from typing import List, Sequence

__all__ = ['merge_results']


def merge_results(dirs: Sequence[Path]) -> str:
    """One markdown table over runs of several recipes (rows: recipe x network, final accuracy first)."""
    lines = ['| recipe | network | runs | final top-1 (%) | best over evaluations (%) | gap to teacher (pts) |',
             '|---|---|---|---|---|---|']
    notes: List[str] = []
    for d in dirs:
        result = json.loads((Path(d) / 'results.json').read_text())
        cfg = result['config']
        notes.append(f"- `{cfg['recipe']}`: {cfg['epochs']} epochs, opt {cfg['opt']}, lr schedule {cfg['lr_schedule']}, "
                     f"DropPath {'on' if cfg['drop_path'] else 'off'}, KD {'on' if cfg['kd'] else 'off'}, "
                     f"DSA k={cfg['dsa_k'] if cfg['dsa'] else 0}; data: {result['data'].get('description', '')}")
        teachers = result['teacher_runs']
        if teachers:
            accs = [r['final_acc'] for r in teachers]
            lines.append(f"| {cfg['recipe']} | teacher {teachers[0]['model']} | {len(accs)} | "
                         f"{100 * sum(accs) / len(accs):.2f} | - | - |")
        for row in result['table']:
            gap = f"{100 * row['gap_to_teacher']:+.2f}" if row['gap_to_teacher'] is not None else '-'
            lines.append(f"| {cfg['recipe']} | {row['model']} | {row['runs']} | {100 * row['final_mean']:.2f} ± "
                         f"{100 * row['final_std']:.2f} | {100 * row['best_mean']:.2f} | {gap} |")
    return '\n'.join(lines + [''] + notes) + '\n'

