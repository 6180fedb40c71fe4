"""Reproduce a published table from distilled sets: our numbers beside the published ones.

Tables:

* ``dpkd``: the DP+KD table (Zhong & Liu) on CIFAR-10: rows Baseline (``dpkd-baseline``), w/o DP&KD
  (``dpkd-no-dp-no-kd``), w/o DP (``dpkd-no-dp``), w/o KD (``dpkd-no-kd``) and Full (``dpkd-mtt`` on MTT data,
  ``dpkd-frepo`` on FRePo data) for the distillation ConvNet (``convnet3``; ``convnet3_frepo`` on FRePo data),
  ResNet18, VGG11, AlexNet and ResNet50 (the DP+KD networks ``*_dd``). A column is one distilled set, and **every
  row of a column runs with the settings the source was published with**: MTT data with instance-norm students
  and teacher and hard labels; FRePo data with batch-norm students and teacher and ``softmax(y / 0.3)`` labels.
  ``--authors DIR`` takes the columns from the DP+KD repository (CityU-MLO/mitigate_architecture_overfitting,
  ``distilled_data/`` and ``snapshots/``): MTT IPC 10, MTT IPC 1 and FRePo IPC 10 (the sets it ships), each MTT
  column with the authors' released ConvNet teacher (``snapshots/cifar10_<ipc>_mtt_convnet``), read through
  ``timm_dd.hub.import_teacher`` and evaluated on our data path, which measures the data path's offset. The
  repository's FRePo teachers are not retrievable, so FRePo columns train theirs first (the column's ConvNet with
  ``dpkd-baseline``, the DP+KD Baseline recipe, last epoch: not selected on the test set as the authors' were).
* ``cross-arch``: the trajectory-matching cross-architecture protocol (``baseline``: the MTT evaluation) for
  ConvNet-3, ResNet18, VGG11 and AlexNet (MTT's networks ``*_mtt``), as in ATT's Table 1.

Every (column, row, network, seed) is one run with its own folder under ``--output``; a finished run writes
``job.json`` and is never redone, an interrupted one resumes from its checkpoint, so the table fills over several
invocations (and machines sharing the folder). ``--workers K`` forks K processes after the data is prepared (many
small runs at once on one GPU); they take runs from one queue ordered by importance (seed 0 first; Baseline and
Full of the first column first) and ``--time-limit`` stops them. The parent alone writes ``reproduce.json`` and
``reproduce.md`` from the finished runs, every 30 s and at the end, marked partial while runs are missing.
Both final and best-over-evaluations accuracies are reported, labelled; published numbers are transcribed with
their source below, and a cell stays empty rather than guessed. ``--epochs N`` shortens every schedule (keep-rate
periods scale with it) and the output says so: such numbers show the pipeline, not the published gains.

Usage::

    python benchmarks/reproduce.py --table dpkd --authors carry/dpkd --dataset cifar10 --output out/dpkd \\
        [--columns mtt-ipc10] [--rows Baseline Full] [--nets resnet18_dd vgg11_dd] [--seeds 0 1 2] [--workers 12]
    python benchmarks/reproduce.py --table dpkd --data <set> --source mtt --ipc 10 --dataset cifar10 \\
        [--layout mtt --image-space zca] [--teacher-checkpoint PATH] --output out/dpkd
    python benchmarks/reproduce.py --table cross-arch --method MTT --ipc 10 --data <set> --dataset cifar10 ...
    python benchmarks/reproduce.py --table dpkd --authors carry/dpkd --report-only --output out/dpkd   # table only
    python benchmarks/reproduce.py --smoke --output /tmp/repro      # seconds, on a tiny set it makes itself

On the project's device machine (one H200; the data travels as ``carry/``, see BENCHMARKS.md "Running it on the
device machine")::

    run(command='mkdir -p /tmp/c10 && tar xJf carry/cifar10-jpeg.tar.xz -C /tmp/c10 && TIMM_DD_DATA=/tmp/c10 '
                'timeout 540 python3 benchmarks/reproduce.py --authors carry/dpkd --columns mtt-ipc10 mtt-ipc1 '
                'frepo-ipc10 --workers 12 --time-limit 430 --output /tmp/dpkd; cp /tmp/dpkd/reproduce.* $OUT/; '
                "tar czf $OUT/dpkd_runs.tgz --exclude='*.pt' -C /tmp dpkd",
        carry=['carry/dpkd', 'carry/cifar10-jpeg.tar.xz'], timeout_s=590)

and unpack ``dpkd_runs.tgz`` over the output folder the table is kept in (finished runs are never redone).
"""
import argparse
import json
import logging
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))
from _ddranking import (  # noqa: E402
    LABEL_MODES, DDRankingRunner, assemble_ddranking, ddranking_jobs, ddranking_markdown, real_bundles,
)
from _jobs import DONE_FILE, Job, done_record, finished_records, run_queue, worker_accelerator  # noqa: E402

#: source of each published table (second-hand where said; see the repository's specs for the details)
SOURCES = {
    'dpkd': 'DP+KD (Zhong & Liu, arXiv 2309.04195) Table 2 as quoted in review texts of the ICLR-24 submission; not '
            'checked against the paper PDF; whether the paper reports final or best-over-evaluations accuracy is '
            'not stated there (the released code prints the best)',
    'cross-arch': "ATT (NiaLiu/ATT) README Table 1 (figures/result2.png): CIFAR-10, distilled on ConvNet, MTT-style "
                  'evaluation networks; mean ± std',
}
DPKD_ROWS = [('Baseline', 'dpkd-baseline'), ('w/o DP&KD', 'dpkd-no-dp-no-kd'), ('w/o DP', 'dpkd-no-dp'),
             ('w/o KD', 'dpkd-no-kd'), ('Full', None)]
DPKD_NETS = ['resnet18_dd', 'vgg11_dd', 'alexnet_dd', 'resnet50_dd']
#: the distillation network of each source (the DP+KD tables' "3-layer CNN" column)
CONVNET = {'mtt': 'convnet3', 'frepo': 'convnet3_frepo'}
#: what each source was published with, for every row of its column (students' and teacher's norm, labels)
SOURCE_SETTINGS = {
    'mtt': dict(student_norm='instance', teacher_model='convnet3', teacher_norm='instance'),
    'frepo': dict(student_norm='batch', teacher_model='convnet3_frepo', teacher_norm='batch',
                  soft_label_temperature=0.3),
}
SOURCE_LAYOUT = {'mtt': 'mtt', 'frepo': 'frepo'}
# (data source, ipc) -> net -> row -> published top-1 (%); the ConvNet: the tables' "3-layer CNN" column
DPKD_PUBLISHED: Dict[tuple, Dict[str, Dict[str, float]]] = {
    ('mtt', 10): {'resnet18_dd': {'Baseline': 48.9, 'Full': 67.4}, 'resnet50_dd': {'Baseline': 28.1, 'Full': 63.8},
                  'alexnet_dd': {'Baseline': 56.9, 'Full': 68.3}, 'vgg11_dd': {'Baseline': 52.6, 'Full': 67.1},
                  'convnet3': {'Baseline': 63.6}},
    ('frepo', 10): {'resnet18_dd': {'w/o DP': 64.0, 'w/o KD': 63.9, 'Full': 66.6}},
    ('frepo', 50): {'resnet18_dd': {'w/o KD': 74.5, 'Full': 74.5}},
}
#: relative cost of one epoch of each network (orders the queue: longest runs of a group first)
_NET_COST = {'resnet50_dd': 4.0, 'resnet18_dd': 2.0, 'vgg11_dd': 1.0, 'alexnet_dd': 0.5}
CROSS_NETS = ['convnet3', 'resnet18_mtt', 'vgg11_mtt', 'alexnet_mtt']
# (method, ipc) -> net -> 'mean ± std'
CROSS_PUBLISHED: Dict[tuple, Dict[str, str]] = {
    ('KIP', 10): {'convnet3': '47.6 ± 0.9', 'resnet18_mtt': '36.8 ± 1.0', 'vgg11_mtt': '42.1 ± 0.4',
                  'alexnet_mtt': '24.4 ± 3.9'},
    ('DSA', 10): {'convnet3': '52.1 ± 0.4', 'resnet18_mtt': '42.8 ± 1.0', 'vgg11_mtt': '43.2 ± 0.5',
                  'alexnet_mtt': '35.9 ± 1.3'},
    ('MTT', 10): {'convnet3': '64.3 ± 0.7', 'resnet18_mtt': '46.4 ± 0.6', 'vgg11_mtt': '50.3 ± 0.8',
                  'alexnet_mtt': '34.2 ± 2.6'},
    ('MTT', 50): {'convnet3': '71.6 ± 0.2', 'resnet18_mtt': '61.9 ± 0.7', 'vgg11_mtt': '55.4 ± 0.8',
                  'alexnet_mtt': '48.2 ± 1.0'},
    ('FTD', 10): {'convnet3': '66.1 ± 0.3', 'resnet18_mtt': '53.2 ± 1.4', 'vgg11_mtt': '47.0 ± 1.5',
                  'alexnet_mtt': '35.9 ± 2.3'},
    ('FTD', 50): {'convnet3': '73.8 ± 0.2', 'resnet18_mtt': '65.7 ± 0.3', 'vgg11_mtt': '58.4 ± 1.6',
                  'alexnet_mtt': '53.8 ± 0.9'},
    ('ATT', 10): {'convnet3': '67.7 ± 0.6', 'resnet18_mtt': '54.5 ± 0.9', 'vgg11_mtt': '54.2 ± 0.8',
                  'alexnet_mtt': '43.6 ± 1.4'},
    ('ATT', 50): {'convnet3': '74.5 ± 0.4', 'resnet18_mtt': '66.3 ± 1.1', 'vgg11_mtt': '61.7 ± 0.9',
                  'alexnet_mtt': '60.0 ± 0.9'},
}
TEACHER_RECIPE = 'dpkd-baseline'  # trains a column's teacher when the source released none

_logger = logging.getLogger('reproduce')


@dataclass(frozen=True)
class Column:
    """One distilled set of the table and how it was published."""
    source: str  # 'mtt' or 'frepo'
    ipc: int
    data: str
    layout: Optional[str] = None
    image_space: Optional[str] = None
    teacher_checkpoint: Optional[str] = None  # the authors' teacher; None: train one first

    @property
    def name(self) -> str:
        return f'{self.source}-ipc{self.ipc}'

    @property
    def description(self) -> str:
        space = f', {self.image_space} space' if self.image_space else ''
        return f'{self.source.upper()} IPC {self.ipc} ({self.data}{space})'


def authors_columns(folder: Path, dataset: str = 'cifar10') -> List[Column]:
    """The columns of the DP+KD repository's release under ``folder`` (those whose images are there)."""
    columns = []
    for source, ipc in (('mtt', 10), ('mtt', 1), ('frepo', 10), ('frepo', 1)):
        data = folder / 'distilled_data' / f'{dataset}_{ipc}_{source}'
        teacher = folder / 'snapshots' / f'{dataset}_{ipc}_{source}_convnet' / 'checkpoint_best.pth'
        if (data / 'images_best.pt').is_file():
            columns.append(Column(source, ipc, str(data), SOURCE_LAYOUT[source], 'zca',
                                  str(teacher) if teacher.is_file() else None))
    if not columns:
        raise SystemExit(f'error: {folder} holds no distilled_data/{dataset}_<ipc>_<mtt|frepo>/images_best.pt: pass '
                         f'the folder of the DP+KD repository (CityU-MLO/mitigate_architecture_overfitting)')
    return columns


def _overrides(recipe: str, epochs: Optional[int]) -> Dict[str, Any]:
    if epochs is None:
        return {}
    out: Dict[str, Any] = {'epochs': epochs, 'eval_every': 0}
    if recipe.startswith('dpkd') and recipe != 'dpkd-baseline':
        out.update(period=max(1, epochs // 8), final_epochs=max(1, epochs // 4), teacher_epochs=epochs)
    return out


def _teacher_key(column: Column) -> str:
    return f'{column.name}/teacher'


def _teacher_folder(out: Path, column: Column) -> Path:
    """Where a column's teacher is saved in timm's folder layout (imported, or trained by its job)."""
    return out / _teacher_key(column) / 'model'


def _teacher_ready(folder: Path) -> bool:
    return (folder / 'config.json').is_file() and (folder / 'model.safetensors').is_file()


def dpkd_jobs(columns: Sequence[Column], rows: Sequence[str], nets: Optional[Sequence[str]], seeds: Sequence[int],
              epochs: Optional[int]) -> List[Job]:
    """The table's runs in the order they matter: per seed, Baseline and Full of every column (the first column
    first), then the ablations; within a group the longest runs first. Teachers that must be trained come first."""
    jobs, keyed = [], []
    for column in columns:
        if column.teacher_checkpoint is None:
            jobs.append(Job(_teacher_key(column), dict(kind='teacher', column=column, epochs=epochs)))
    for seed in seeds:
        for ci, column in enumerate(columns):
            for row, recipe in DPKD_ROWS:
                if row not in rows:
                    continue
                recipe = recipe or f'dpkd-{column.source}'
                cfg_epochs = _recipe_epochs(recipe, epochs)
                for net in (nets or [CONVNET[column.source], *DPKD_NETS]):
                    kd = _recipe_kd(recipe)
                    needs = (_teacher_key(column),) if kd and column.teacher_checkpoint is None else ()
                    main = row in ('Baseline', 'Full')
                    order = (seed, 0 if main else 1, ci, -cfg_epochs * _NET_COST.get(net, 0.25))
                    keyed.append((order, Job(f'{column.name}/{recipe}/{net}/seed{seed}',
                                             dict(kind='student', column=column, row=row, recipe=recipe, net=net,
                                                  seed=seed, epochs=epochs), needs)))
    return jobs + [job for _, job in sorted(keyed, key=lambda item: item[0])]


def _recipe_epochs(recipe: str, epochs: Optional[int]) -> int:
    from timm_dd.train.config import load_config
    return load_config(recipe, _overrides(recipe, epochs)).epochs


def _recipe_kd(recipe: str) -> bool:
    from timm_dd.train.config import load_config
    return load_config(recipe).uses_teacher


def _column_settings(column: Column, out: Path) -> Dict[str, Any]:
    return dict(SOURCE_SETTINGS[column.source], teacher=str(_teacher_folder(out, column)))


def prepare_columns(columns: Sequence[Column], dataset: str, out: Path,
                    soft_label_temperature: Optional[float] = None) -> Dict[str, Any]:
    """Every column's data (prepared once, before the workers fork) and the authors' teachers in timm's layout."""
    from timm_dd.hub import import_teacher
    from timm_dd.train import prepare_data
    from timm_dd.train.networks import save_model
    column_data = {}
    for column in columns:
        temperature = soft_label_temperature or SOURCE_SETTINGS[column.source].get('soft_label_temperature')
        data = prepare_data(column.data, dataset=dataset, layout=column.layout, image_space=column.image_space,
                            soft_label_temperature=temperature)
        column_data[column.name] = data
        folder = _teacher_folder(out, column)
        if column.teacher_checkpoint and not _teacher_ready(folder):
            shutil.rmtree(folder, ignore_errors=True)  # ours: a copy of the results without the weights
            settings = SOURCE_SETTINGS[column.source]
            teacher = import_teacher(column.teacher_checkpoint, settings['teacher_model'],
                                     num_classes=data.num_classes, norm=settings['teacher_norm'])
            save_model(teacher, folder, data, dict(norm=settings['teacher_norm']))
    return column_data


class DpkdRunner:
    """Runs one job of the table on a worker's accelerator (created in the worker); the columns' data is read from
    the file the parent wrote once (memory-mapped: the workers share its pages)."""

    def __init__(self, out: Path, data_file: Path, cpu: bool, model_kwargs: Optional[Dict[str, Any]],
                 jobs: Sequence[Job] = ()):
        self.out, self.data_file, self.cpu, self.model_kwargs = out, data_file, cpu, model_kwargs
        self._jobs = list(jobs)

    def estimate(self, job: Job) -> Optional[float]:
        """The longest time a finished run of the same cell (any seed) took, or None."""
        if job.spec['kind'] != 'student':
            return None
        cell = job.key.rsplit('/', 1)[0] + '/'  # <column>/<recipe>/<net>/
        seconds = [r['seconds'] for r in finished_records(self.out, self._jobs) if r['key'].startswith(cell)]
        return max(seconds) if seconds else None

    def setup(self, worker: int) -> Callable[[Job], Dict[str, Any]]:
        import torch
        self.worker, self.accelerator = worker, worker_accelerator(worker, self.cpu)
        self.column_data = torch.load(self.data_file, weights_only=False, mmap=True)  # our own file, written just now
        return self.run

    def run(self, job: Job) -> Dict[str, Any]:
        spec = job.spec
        run = self._teacher(job) if spec['kind'] == 'teacher' else self._student(job)
        return dict(run, column=spec['column'].name, device=str(self.accelerator.device), worker=self.worker)

    def _teacher(self, job: Job) -> Dict[str, Any]:
        from timm_dd.train import run_experiment
        from timm_dd.train.config import load_config
        from timm_dd.train.networks import load_done
        column: Column = job.spec['column']
        settings = SOURCE_SETTINGS[column.source]
        cfg = load_config(TEACHER_RECIPE, dict(_overrides(TEACHER_RECIPE, job.spec['epochs']),
                                               student_norm=settings['teacher_norm']))
        net = settings['teacher_model']
        src, dst = self.out / job.key / 'runs' / net / 'seed0' / 'model', _teacher_folder(self.out, column)
        run = load_done(src.parent)
        if run is None or not _teacher_ready(dst):
            shutil.rmtree(dst, ignore_errors=True)  # ours: a copy of the results without the weights
            # a finished teacher whose network was not kept (results copied without weights) is trained again
            result = run_experiment(cfg, [net], [0], self.column_data[column.name], self.out / job.key,
                                    self.accelerator, resume=src.is_dir() or run is None, save_models=True)
            src.rename(dst)
            run = result.runs[0]
        return dict(kind='teacher', net=net, recipe=TEACHER_RECIPE, final_acc=run['final_acc'],
                    best_acc=run['best_acc'])

    def _student(self, job: Job) -> Dict[str, Any]:
        from timm_dd.train import run_experiment
        from timm_dd.train.config import load_config
        spec = job.spec
        column: Column = spec['column']
        recipe, net, seed = spec['recipe'], spec['net'], spec['seed']
        cfg = load_config(recipe, {**_overrides(recipe, spec['epochs']), **_column_settings(column, self.out)})
        kwargs = self.model_kwargs if net != CONVNET[column.source] else None
        result = run_experiment(cfg, [net], [seed], self.column_data[column.name], self.out / job.key, self.accelerator,
                                model_kwargs=kwargs, resume=True)
        run = result.runs[0]
        teacher = result.teacher_runs[0]['final_acc'] if result.teacher_runs else None
        return dict(kind='student', row=spec['row'], recipe=recipe, net=net, seed=seed, epochs=cfg.epochs,
                    final_acc=run['final_acc'], best_acc=run['best_acc'], best_epoch=run['best_epoch'],
                    teacher_acc=teacher)


def _mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}'


def assemble_dpkd(records: List[Dict[str, Any]], columns: Sequence[Column], jobs: Sequence[Job],
                  compare_as: str, protocol: str) -> Dict[str, Any]:
    """The table from the finished runs: one line per (column, row, network) that has a run, in table order."""
    students = [r for r in records if r.get('kind') == 'student']
    teachers = {r['column']: r for r in records if r.get('kind') == 'teacher'}
    cifar10 = compare_as.lower() == 'cifar10'
    rows, notes = [], []
    for column in columns:
        published = DPKD_PUBLISHED.get((column.source, column.ipc), {}) if cifar10 else {}
        planned = [j.spec for j in jobs if j.spec.get('column') == column and j.spec['kind'] == 'student']
        order = [r for r, _ in DPKD_ROWS]
        canonical = [*DPKD_NETS, CONVNET[column.source]]  # the table's order, whichever invocation ran a cell
        nets = sorted(dict.fromkeys(s['net'] for s in planned),
                      key=lambda n: canonical.index(n) if n in canonical else len(canonical))
        cells = sorted(dict.fromkeys((s['row'], s['recipe'], s['net']) for s in planned),
                       key=lambda cell: (order.index(cell[0]), nets.index(cell[2])))
        for row, recipe, net in cells:
            runs = [r for r in students if (r['column'], r['row'], r['net']) == (column.name, row, net)]
            seeds = sorted({s['seed'] for s in planned if (s['row'], s['net']) == (row, net)})
            line = dict(column=column.name, row=row, recipe=recipe, net=net, runs=len(runs), seeds_planned=seeds,
                        published=published.get(net, {}).get(row))
            if runs:
                line.update(ours=_mean_std([r['final_acc'] for r in runs]),
                            best=_mean_std([r['best_acc'] for r in runs]),
                            final_mean=statistics.fmean(r['final_acc'] for r in runs),
                            best_mean=statistics.fmean(r['best_acc'] for r in runs),
                            seconds=statistics.fmean(r['seconds'] for r in runs))
            rows.append(line)
        teacher_accs = [r['teacher_acc'] for r in students if r['column'] == column.name and r.get('teacher_acc')]
        trained = teachers.get(column.name)
        acc = teacher_accs[0] if teacher_accs else (trained['final_acc'] if trained else None)
        convnet_published = published.get(CONVNET[column.source], {}).get('Baseline')
        if acc is not None:
            who = ("the authors' released teacher" if column.teacher_checkpoint else
                   f'our teacher ({TEACHER_RECIPE}, last epoch)')
            offset = (f"; the paper's 3-layer CNN: {convnet_published:.1f}, "
                      f'offset {100 * acc - convnet_published:+.1f}'
                      if convnet_published is not None and column.teacher_checkpoint else '')
            notes.append(f'{column.name}: {who} ({SOURCE_SETTINGS[column.source]["teacher_model"]}) on this data '
                         f'path: {100 * acc:.1f} %{offset}')
    pending = [j.key for j in jobs if not any(r.get('key') == j.key for r in records)]
    devices = sorted({r['device'] for r in records if r.get('device')})
    return dict(table='dpkd', columns=[dict(name=c.name, data=c.data, description=c.description,
                                            settings=SOURCE_SETTINGS[c.source],
                                            teacher=c.teacher_checkpoint or f'trained in the run ({TEACHER_RECIPE})')
                                       for c in columns],
                protocol=protocol, published_source=SOURCES['dpkd'], devices=devices, rows=rows, notes=notes,
                complete=not pending, pending=pending)


def to_markdown(report: Dict[str, Any]) -> str:
    if report['table'] == 'ddranking':
        return ddranking_markdown(report)
    if report['table'] == 'cross-arch':
        lines = [f"Table `cross-arch` on {report['description']}; seeds {report['seeds']}; {report['protocol']}; "
                 f"device {report['device']}. Final top-1 (%), mean ± std over seeds.",
                 f"Published: {report['published_source']}; empty where the source has no number.", '',
                 '| row | recipe | network | ours | published |', '|---|---|---|---|---|']
        for r in report['rows']:
            pub = '' if r['published'] is None else r['published']
            lines.append(f"| {r['row']} | `{r['recipe']}` | {r['net']} | {r['ours']} | {pub} |")
        return '\n'.join(lines) + '\n'
    status = 'complete' if report['complete'] else f"PARTIAL: {len(report['pending'])} runs not finished"
    lines = [f"Table `dpkd` ({status}); {report['protocol']}; runs made on {', '.join(report['devices']) or '-'}.",
             'Top-1 (%) on the CIFAR-10 test set, mean ± std over the finished seeds: **final** (after the last '
             'epoch) and best over the periodic evaluations (test-set selection; the released DP+KD code reports '
             'the best).', f"Published: {report['published_source']}; empty where the source has no number.", '']
    for column in report['columns']:
        lines += [f"**{column['name']}**: {column['description']}; settings {column['settings']}; teacher "
                  f"{column['teacher']}.", '', '| row | recipe | network | final | best | runs | published |',
                  '|---|---|---|---|---|---|---|']
        for r in (r for r in report['rows'] if r['column'] == column['name']):
            pub = '' if r['published'] is None else f"{r['published']:.1f}"
            lines.append(f"| {r['row']} | `{r['recipe']}` | {r['net']} | {r.get('ours', '')} | {r.get('best', '')} "
                         f"| {r['runs']}/{len(r['seeds_planned'])} | {pub} |")
        lines.append('')
    lines += [f'* {note}' for note in report['notes']]
    return '\n'.join(lines) + '\n'


def write_report(report: Dict[str, Any], out: Path) -> str:
    """``reproduce.{json,md}`` (``ddranking.{json,md}`` for that table, which may share the folder)."""
    from timm_dd.io import atomic_write, atomic_write_json
    stem = 'ddranking' if report['table'] == 'ddranking' else 'reproduce'
    atomic_write_json(out / f'{stem}.json', report, indent=2)
    text = to_markdown(report)
    with atomic_write(out / f'{stem}.md', 'w') as f:
        f.write(text)
    return text


def table_jobs(out: Path, jobs: Sequence[Job], columns: Sequence[Column], seeds: Sequence[int],
               epochs: Optional[int]) -> List[Job]:
    """The jobs the written table covers: this invocation's, and every run of the whole table (every column,
    row and network, seeds 0-2) that an earlier invocation into the same folder finished. So a run of one cell
    (``--rows Full --nets vgg11_dd --seeds 1``) adds its cell to the table instead of replacing the table."""
    keys = {j.key for j in jobs}
    whole = dpkd_jobs(columns, [r for r, _ in DPKD_ROWS], None, sorted({0, 1, 2, *seeds}), epochs)
    return [*jobs, *(j for j in whole if j.key not in keys and done_record(out, j.key) is not None)]


def run_dpkd(args: argparse.Namespace, columns: Sequence[Column],
             all_columns: Optional[Sequence[Column]] = None) -> Dict[str, Any]:
    """Run the table's missing runs (or, with ``--report-only``, only assemble the finished ones); the written
    table also keeps the finished runs of ``all_columns`` (default ``columns``) from earlier invocations."""
    import torch
    from timm_dd.io import atomic_write
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    jobs = dpkd_jobs(columns, args.rows, args.nets, args.seeds, args.epochs)
    all_columns = list(all_columns or columns)
    protocol = ('full published schedules' if args.epochs is None else
                f'SHORTENED to {args.epochs} epochs per run (published: 1000-4000): shows the pipeline, not the '
                f'published gains')

    def table() -> Dict[str, Any]:
        covered = table_jobs(out, jobs, all_columns, args.seeds, args.epochs)
        report = assemble_dpkd(finished_records(out, covered), all_columns, covered, args.compare_as or args.dataset,
                               protocol)
        write_report(report, out)
        return report

    if args.report_only:
        return table()
    column_data = prepare_columns(columns, args.dataset, out, args.soft_label_temperature)
    for column in columns:  # a teacher recorded as finished whose network is gone is a job again
        if not _teacher_ready(_teacher_folder(out, column)):
            (out / _teacher_key(column) / DONE_FILE).unlink(missing_ok=True)
    data_file = out / '.columns.pt'  # rewritten by each invocation: the data as prepared now
    with atomic_write(data_file, 'wb') as f:
        torch.save(column_data, f)
    runner = DpkdRunner(out, data_file, args.cpu, args.model_kwargs, jobs)
    status = run_queue(out, jobs, runner, workers=args.workers, time_limit=args.time_limit, on_tick=table)
    report = dict(table(), queue=dict(status, workers=args.workers))
    write_report(report, out)
    return report


def run_ddranking(args: argparse.Namespace, columns: Sequence[Column]) -> Dict[str, Any]:
    """DD-Ranking's label-robust score of every column (``_ddranking.py``), in its own files of the folder."""
    import torch
    from timm_dd.io import atomic_write
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    nets_of = {c.name: list(args.nets or [CONVNET[c.source]]) for c in columns}
    jobs = ddranking_jobs(columns, nets_of, args.rounds, args.ddranking_labels, args.epochs, args.real_acc)
    protocol = ('DD-Ranking\'s schedules (ddranking-hard 1000 epochs, ddranking-soft 300, ddranking-real 200)'
                if args.epochs is None else f'SHORTENED to {args.epochs} epochs per run: shows the pipeline only')

    def table() -> Dict[str, Any]:
        report = assemble_ddranking(finished_records(out, jobs), columns, nets_of, args.rounds,
                                    args.ddranking_labels, args.real_acc, jobs, protocol)
        write_report(report, out)
        return report

    if args.report_only:
        return table()
    from timm_dd.distilled import DistilledSetError
    stored = args.ddranking_labels == 'soft-stored'  # the stored logits at the loss's temperature, 1
    hard_labels = SystemExit(f'error: {", ".join(c.data for c in columns)}: a set has hard labels; --ddranking-labels '
                             f'soft-stored scores a set\'s own soft labels (use hard, or soft with a relabelling '
                             f'teacher)')
    try:
        column_data = prepare_columns(columns, args.dataset, out, args.soft_label_temperature or (1.0 if stored else None))
    except DistilledSetError as e:  # a temperature for a set without soft labels
        if stored and 'without soft_labels' in str(e):
            raise hard_labels from None
        raise
    if stored and not all(column_data[c.name].train.soft for c in columns):
        raise hard_labels
    column_data.update(real_bundles(columns, args.dataset))
    data_file = out / '.ddranking-data.pt'  # rewritten by each invocation: the data as prepared now
    with atomic_write(data_file, 'wb') as f:
        torch.save(column_data, f)
    runner = DDRankingRunner(out, data_file, args.cpu, args.model_kwargs, args.ddranking_teacher)
    status = run_queue(out, jobs, runner, workers=args.workers, time_limit=args.time_limit, on_tick=table)
    report = dict(table(), queue=dict(status, workers=args.workers))
    write_report(report, out)
    return report


def run_cross_arch(args: argparse.Namespace) -> Dict[str, Any]:
    from accelerate import Accelerator
    from timm_dd.train import prepare_data, run_experiment
    from timm_dd.train.config import load_config
    accelerator = Accelerator(cpu=args.cpu)
    data = prepare_data(args.data, dataset=args.dataset, layout=args.layout, image_space=args.image_space,
                        soft_label_temperature=args.soft_label_temperature)
    cifar10 = str(args.compare_as or args.dataset).lower() == 'cifar10'
    published = CROSS_PUBLISHED.get((args.method, args.ipc), {}) if cifar10 else {}
    cfg = load_config('baseline', _overrides('baseline', args.epochs))
    result = run_experiment(cfg, args.nets or CROSS_NETS, args.seeds, data, Path(args.output) / 'baseline',
                            accelerator, model_kwargs=args.model_kwargs, resume=True)
    rows = [dict(row=f'{args.method} IPC {args.ipc}', recipe='baseline', net=line['model'],
                 ours=f"{100 * line['final_mean']:.1f} ± {100 * line['final_std']:.1f}", runs=line['runs'],
                 published=published.get(line['model'])) for line in result.table]
    protocol = ('full published schedules' if args.epochs is None else
                f'SHORTENED to {args.epochs} epochs per run (published: 1000-4000): shows the pipeline, not the '
                f'published gains')
    report = dict(table='cross-arch', data=str(args.data), description=data.description, seeds=list(args.seeds),
                  protocol=protocol, published_source=SOURCES['cross-arch'], device=str(accelerator.device),
                  rows=rows)
    write_report(report, Path(args.output))
    return report


def _smoke_set(folder: Path) -> Path:
    """A tiny MTT-layout set of real digits (for --smoke)."""
    import torch
    if (folder / 'labels_best.pt').is_file():
        return folder
    from timm_dd.data import load_dataset
    train = load_dataset('digits', 'train', image_size=32)
    idx = torch.cat([(train.labels == c).nonzero().flatten()[:1] for c in range(10)])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(train.normalized()[idx], folder / 'images_best.pt')
    torch.save(train.labels[idx], folder / 'labels_best.pt')
    torch.save(torch.tensor(0.01), folder / 'lr_best.pt')
    return folder


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--table', choices=['dpkd', 'ddranking', 'cross-arch'], default='dpkd')
    p.add_argument('--authors', default=None,
                   help='dpkd: the DP+KD repository folder (distilled_data/, snapshots/): its sets are the columns')
    p.add_argument('--columns', nargs='+', default=None, help='dpkd with --authors: e.g. mtt-ipc10 frepo-ipc10')
    p.add_argument('--rows', nargs='+', default=[r for r, _ in DPKD_ROWS], choices=[r for r, _ in DPKD_ROWS])
    p.add_argument('--data', help='one distilled set (timm_dd folder, Hub id, or another layout)')
    p.add_argument('--teacher-checkpoint', default=None, help='dpkd with --data: the source\'s released teacher')
    p.add_argument('--dataset', default='cifar10', help='the real dataset (test set, class names, ZCA)')
    p.add_argument('--layout', default=None, help='layout of --data (default: detected)')
    p.add_argument('--image-space', default=None, choices=['zca', 'normalized', 'pixel'])
    p.add_argument('--soft-label-temperature', type=float, default=None)
    p.add_argument('--source', choices=['mtt', 'frepo'], default='mtt', help='dpkd: the distillation method of --data')
    p.add_argument('--method', default='MTT', help='cross-arch: the method row (KIP, DSA, MTT, FTD, ATT)')
    p.add_argument('--ipc', type=int, default=10)
    p.add_argument('--nets', nargs='+', default=None)
    p.add_argument('--model-kwargs', type=json.loads, default=None,
                   help='JSON for the test networks (not the ConvNet), e.g. \'{"widths": [4, 4, 8, 8]}\' (tiny runs)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--epochs', type=int, default=None, help='shorten every schedule to this many epochs')
    p.add_argument('--workers', type=int, default=1, help='dpkd: processes taking runs at once (GPU: 8-16)')
    p.add_argument('--time-limit', type=float, default=None, help='dpkd: stop the workers after this many seconds')
    p.add_argument('--output', default='output/reproduce')
    p.add_argument('--report-only', action='store_true', help='dpkd: only write the table of the finished runs')
    p.add_argument('--ddranking-labels', choices=LABEL_MODES, default='hard',
                   help="ddranking: the set's evaluation the score credits: hard labels, a relabelling teacher "
                        "(soft) or the set's own soft labels (soft-stored)")
    p.add_argument('--ddranking-teacher', default=None,
                   help='ddranking --ddranking-labels soft/soft-stored: the teacher that relabels (or labels the '
                        'random subsets), a saved network trained on the real data: folder or hf-hub:')
    p.add_argument('--rounds', type=int, default=5, help="ddranking: evaluation rounds (DD-Ranking's num_eval)")
    p.add_argument('--real-acc', type=float, default=None,
                   help='ddranking: the whole real set\'s accuracy in %% (DD-Ranking\'s REAL_DATA_ACC_CACHE) '
                        'instead of training on it')
    p.add_argument('--cpu', action='store_true')
    p.add_argument('--smoke', action='store_true', help='a seconds-long run on a tiny set (tests)')
    args = p.parse_args(argv)
    args.compare_as = None
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    if args.smoke:
        args.data = str(_smoke_set(Path(args.output) / 'smoke-set'))  # the same path on resume
        args.dataset, args.image_space, args.layout, args.cpu = 'digits', 'normalized', 'mtt', True
        args.compare_as = 'cifar10'  # smoke: show the CIFAR-10 columns beside the tiny digits run
        args.epochs, args.seeds = 1, ([0] if args.seeds == [0, 1, 2] else args.seeds)
        args.rounds = 1 if args.rounds == 5 else args.rounds
        if args.table == 'ddranking':
            args.ipc = 1  # the smoke set's images per class (DD-Ranking labels a set by position)
        args.nets = args.nets or (['resnet18_dd'] if args.table == 'dpkd' else ['convnet3'])
        args.model_kwargs = args.model_kwargs or ({'widths': [4, 4, 8, 8]} if args.table == 'dpkd' else {'width': 4})
    if args.table == 'cross-arch':
        if args.data is None:
            p.error('--data is required (or --smoke)')
        print(to_markdown(run_cross_arch(args)))
        return 0
    if (args.data is None) == (args.authors is None):
        p.error('give one distilled set (--data, with --source and --ipc) or the DP+KD repository (--authors), or '
                '--smoke')
    if args.authors:
        columns = all_columns = authors_columns(Path(args.authors), args.dataset)
        if args.columns:
            unknown = sorted(set(args.columns) - {c.name for c in columns})
            if unknown:
                p.error(f'--columns {unknown} not in {args.authors} (it holds {[c.name for c in columns]})')
            columns = [c for c in columns if c.name in args.columns]
    else:
        columns = all_columns = [Column(args.source, args.ipc, args.data, args.layout, args.image_space,
                                        args.teacher_checkpoint)]
    if args.table == 'ddranking':
        if args.ddranking_labels != 'hard' and not args.ddranking_teacher:
            p.error('--ddranking-labels soft needs --ddranking-teacher: DD-Ranking relabels with networks trained on '
                    'the real data (train one with `train.py -c ddranking-real --real-ipc -1 --save-models`)')
        if args.rounds < 1:
            p.error(f'--rounds must be at least 1, got {args.rounds}')
        report = run_ddranking(args, columns)
    else:
        report = run_dpkd(args, columns, all_columns)
    print(to_markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
