"""Cross-architecture experiments: several networks x seeds (and their teachers) on one :class:`DataSplits`, spread
over the processes, merged into one results table.

``train.py`` is a thin command line over :func:`~timm_dd.train.prepare.prepare_data` and :func:`run_experiment`.
"""
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataSplits
from ..fields import field_changes
from ..io import atomic_write, atomic_write_json, make_folder
from ..seeding import seeded
from .batched import train_seeds_batched
from .config import TrainConfig, short_run_note
from .loop import eval_batch_size
from .networks import (
    create_student, elf_targets, load_done, result_record, run_folder, save_done, save_model, train_or_load_teacher,
)
from .report import format_table  # the one table renderer (also for merged results)
from .task import fallback_lr_note, resolve_lr
from .trainer import train_model

__all__ = ['run_experiment', 'ExperimentResult', 'check_resume', 'format_table', 'summarize']

_logger = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    runs: List[Dict[str, Any]]
    teacher_runs: List[Dict[str, Any]]
    table: List[Dict[str, Any]]
    config: Dict[str, Any]
    data: Dict[str, Any]
    notes: List[str] = field(default_factory=list)  # what a reader of the numbers must know (a short schedule)


def _test_loader(data: DataSplits, cfg: TrainConfig, accelerator: Accelerator, distributed: bool) -> DataLoader:
    """Sharded over the processes for DDP runs; whole (and unprepared) when each process trains runs alone."""
    batch_size = cfg.test_batch_size or eval_batch_size(accelerator.device)
    loader = data.test.loader(batch_size, pin_memory=accelerator.device.type == 'cuda')  # converted per batch
    return accelerator.prepare(loader) if distributed else loader


RUN_CONFIG_FILE = 'run_config.json'
#: recipe fields that may change when a run is resumed (bookkeeping only: they do not change the trained networks)
RESUME_SAFE_FIELDS = ('checkpoint_every', 'test_batch_size', 'parallel', 'keep_checkpoints', 'eval_after_first_epoch')


#: recipe fields added since a run may have been recorded, with the value that reproduces the old behaviour, and
#: removed fields: a run recorded before them resumes as long as the current value is that one
_NEW_FIELD_DEFAULTS = {'config.recompute_bn': False, 'config.extra': None, 'config.eval_subset_per_class': 0,
                       'config.lr_step_1999_quirk': False, 'config.soft_loss': 'ce', 'config.soft_loss_t2': False,
                       'config.relabel': False, 'config.cutmix_beta': None}


def check_resume(out_dir: Path, record: Dict[str, Any], resume: bool, force: bool = False) -> None:
    """``--resume`` into a folder made with another recipe, data or model kwargs is an error naming the fields
    (``force=True`` continues on purpose, with a warning)."""
    path = Path(out_dir) / RUN_CONFIG_FILE
    if not (resume and path.is_file()):
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'{path}: unreadable run record ({e}); resume into a new --output') from e
    diffs = [f'{name}: {a!r} -> {b!r}' for name, a, b in field_changes(
        saved, json.loads(json.dumps(record)), RESUME_SAFE_FIELDS, _NEW_FIELD_DEFAULTS, nested=True)]
    if diffs and not force:
        raise ValueError(f'--resume: {out_dir} holds a run made with other settings ({"; ".join(diffs)}); use another '
                         f'--output, or --force-resume to continue it with the new settings on purpose')
    if diffs:
        _logger.warning('resuming %s with changed settings: %s', out_dir, '; '.join(diffs))


class _Experiment:
    """Where each run of an experiment goes and how it is trained: ``parallel: runs`` gives job ``j`` to process
    ``j % K`` (trained alone); ``ddp`` has every process take part in every run; ``vmap`` stacks the seeds of a
    network."""

    def __init__(self, cfg: TrainConfig, data: DataSplits, out_dir: Path, accelerator: Accelerator,
                 model_kwargs: Optional[Dict[str, Any]], resume: bool, save_models: bool):
        self.cfg, self.data, self.out_dir, self.accelerator = cfg, data, out_dir, accelerator
        self.model_kwargs, self.resume, self.save_models = dict(model_kwargs or {}), resume, save_models
        self.distributed = cfg.parallel == 'ddp' and accelerator.num_processes > 1
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.test_loader = _test_loader(data, cfg, accelerator, self.distributed)

    @property
    def writer(self) -> bool:
        return self.accelerator.is_main_process or not self.distributed

    def owned(self, job: int) -> bool:
        return self.distributed or job % self.world == self.rank

    def teacher(self, seed: int, resume: bool) -> Tuple[nn.Module, Dict[str, Any]]:
        return train_or_load_teacher(self.cfg, self.data, seed, self.accelerator, self.test_loader, self.out_dir,
                                     resume, self.distributed)

    def teachers(self, seeds: Sequence[int]) -> Tuple[Dict[int, nn.Module], List[Tuple[int, Dict[str, Any]]]]:
        """Every seed's teacher (trained by its owner, loaded by the others) and this process's teacher records."""
        cfg, teachers, records = self.cfg, {}, []
        teacher_seeds = seeds[:1] if cfg.teacher else seeds  # one loaded teacher serves every seed
        for job, seed in enumerate(teacher_seeds):
            if self.owned(job) or cfg.teacher:
                teachers[seed], record = self.teacher(seed, self.resume)
                if self.owned(job):
                    records.append((job, record))
        if not self.distributed and self.world > 1 and not cfg.teacher:
            self.accelerator.wait_for_everyone()  # every teacher is on disk: load the ones other processes trained
            for seed in teacher_seeds:
                if seed not in teachers:
                    teachers[seed] = self.teacher(seed, True)[0]
        if cfg.teacher:
            teachers = {s: teachers[teacher_seeds[0]] for s in seeds}
        return teachers, records

    def student(self, name: str, seed: int, teacher: Optional[nn.Module]) -> Dict[str, Any]:
        """Train (or, on resume, read back) one network with one seed; returns its record."""
        run_dir = run_folder(self.out_dir, name, seed)
        done = load_done(run_dir) if self.resume else None
        if done is not None:
            return done
        data, kwargs = self.data, self.model_kwargs
        with seeded(seed):
            student = create_student(name, data, self.cfg, **kwargs)
        feats = elf_targets(self.cfg, student, data, self.accelerator.device) if self.cfg.elf else None
        snapshot = (lambda epochs, m=student: save_model(m, run_dir / f'model-epoch{epochs}', data, kwargs))
        result = train_model(student, data.train, self.test_loader, self.cfg.replace(seed=seed), self.accelerator,
                             name, teacher=teacher, elf_features=feats, out_dir=run_dir, resume=self.resume,
                             desc=f'{name} seed {seed}', distributed=self.distributed, snapshot=snapshot)
        record = dict(result_record(name, seed, result), process=self.rank)
        if self.writer:
            if self.save_models:
                save_model(student, run_dir / 'model', data, kwargs)
            save_done(run_dir, record, self.cfg.keep_checkpoints)
        return record

    def seeds_batched(self, name: str, seeds: Sequence[int], first_job: int) -> List[Tuple[int, Dict[str, Any]]]:
        """Every seed of ``name`` at once (``parallel: vmap``); finished runs are kept on ``resume``."""
        run_dirs = [run_folder(self.out_dir, name, seed) for seed in seeds]
        done = [load_done(d) if self.resume else None for d in run_dirs]
        if all(d is not None for d in done):
            return [(first_job + i, d) for i, d in enumerate(done)]
        students = []
        for seed in seeds:
            with seeded(seed):
                students.append(create_student(name, self.data, self.cfg, **self.model_kwargs))
        results = train_seeds_batched(students, seeds, self.data.train, self.test_loader, self.cfg,
                                      self.accelerator, desc=f'{name} seeds {list(seeds)} (vmap)')
        records = []
        for i, (seed, student, result, run_dir) in enumerate(zip(seeds, students, results, run_dirs)):
            record = dict(result_record(name, seed, result), process=self.rank)
            if self.save_models:
                save_model(student, run_dir / 'model', self.data, self.model_kwargs)
            save_done(run_dir, record, self.cfg.keep_checkpoints)
            records.append((first_job + i, record))
        return records

    def students(self, models: Sequence[str], seeds: Sequence[int], teachers: Dict[int, nn.Module],
                 finished: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> List[Tuple[int, Dict[str, Any]]]:
        """This process's share of the (network, seed) runs, as ``(job, record)``. ``finished(records)`` is called
        after each run when this process sees every run (one process, or DDP), so a partial table can be written."""
        if self.cfg.parallel == 'vmap':
            return [run for job, name in enumerate(models) if job % self.world == self.rank
                    for run in self.seeds_batched(name, seeds, first_job=job * len(seeds))]
        done = []
        for job, (name, seed) in enumerate((name, seed) for name in models for seed in seeds):
            if self.owned(job):
                done.append((job, self.student(name, seed, teachers.get(seed))))
                if finished is not None and (self.world == 1 or self.distributed):
                    finished([record for _, record in done])
        return done

    def merge(self, jobs: List[Tuple[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """Every process's records, in job order: the same list on every process as in a one-process run."""
        if not self.distributed and self.world > 1:
            jobs = gather_object(jobs)
        return [record for _, record in sorted(jobs, key=lambda job: job[0])]


def run_experiment(
        cfg: TrainConfig,
        models: Sequence[str],
        seeds: Sequence[int],
        data: DataSplits,
        out_dir: Path,
        accelerator: Accelerator,
        model_kwargs: Optional[Dict[str, Any]] = None,
        resume: bool = False,
        save_models: bool = False,
        force_resume: bool = False,
) -> ExperimentResult:
    """Train every model with every seed; write ``results.json``, ``results.md`` and per-run logs to ``out_dir``.

    ``save_models`` also writes each trained network to ``runs/<model>/seed<k>/model`` in timm's local-dir layout
    (loadable with ``timm.create_model('local-dir:<folder>', pretrained=True)`` or ``timm_dd.hub.load_teacher``).
    """
    out_dir = Path(out_dir)
    _check_distinct(models, seeds)
    run_record = {'config': cfg.to_dict(), 'data': data.record, 'model_kwargs': dict(model_kwargs or {})}
    check_resume(out_dir, run_record, resume, force_resume)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / RUN_CONFIG_FILE, run_record, indent=2)
    resolve_lr(cfg, data.train.learned_lr)  # a learned lr out of range stops here, before any teacher trains
    lr_note = fallback_lr_note(cfg, data.train.learned_lr, data.source.get('kind') == 'distilled')
    subset_note = (f'periodic evaluations (curves, best) use a fixed class-balanced subset of the test set, '
                   f'{cfg.eval_subset_per_class} images per class; final accuracies use the whole test set'
                   if cfg.eval_subset_per_class else None)
    notes = [note for note in (short_run_note(cfg), lr_note, subset_note) if note]
    for note in notes:
        _logger.warning(note)
    notes += data.notes  # logged where they were found
    experiment = _Experiment(cfg, data, out_dir, accelerator, model_kwargs, resume, save_models)
    teachers, teacher_runs = experiment.teachers(seeds) if cfg.uses_teacher else ({}, [])
    data_record = dict(data.record, description=data.description)
    total = len(models) * len(seeds)

    def partial_table(runs: List[Dict[str, Any]]) -> None:  # a killed experiment leaves the table of its finished runs
        if accelerator.is_main_process and len(runs) < total:
            own = [record for _, record in teacher_runs]
            write_results(ExperimentResult(runs, own, summarize(runs, own), cfg.to_dict(), data_record, notes + [
                f'PARTIAL: {len(runs)} of {total} runs finished; this table is rewritten as each run ends']), out_dir)

    runs = experiment.merge(experiment.students(models, seeds, teachers, partial_table))
    teacher_runs = experiment.merge(teacher_runs)
    result = ExperimentResult(runs, teacher_runs, summarize(runs, teacher_runs), cfg.to_dict(), data_record, notes)
    if accelerator.is_main_process:
        write_results(result, out_dir)
    accelerator.wait_for_everyone()
    return result


def _check_distinct(models: Sequence[str], seeds: Sequence[int]) -> None:
    """Each (network, seed) is one run: a repeated seed would run once and be reported as two runs (``± 0.00``)."""
    for what, flag, values in (('seeds', '--seeds', seeds), ('models', '--models', models)):
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f'{what} {list(values)} repeat {", ".join(map(str, repeated))}: each one is one run; '
                             f'give distinct {what} ({flag})')
        if not values:
            raise ValueError(f'no {what} given ({flag})')
    bad = [s for s in seeds if not 0 <= s <= 2 ** 32 - 1]
    if bad:
        raise ValueError(f'seeds must lie in [0, 4294967295] (numpy\'s range), got {bad}')


def _mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: List[Dict[str, Any]], teacher_runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per network: mean +- std of the final accuracy, the mean best-over-evaluations, gap to the teacher."""
    teacher_mean = _mean_std([r['final_acc'] for r in teacher_runs])[0] if teacher_runs else None
    table = []
    for name in dict.fromkeys(r['model'] for r in runs):
        rs = [r for r in runs if r['model'] == name]
        final_mean, final_std = _mean_std([r['final_acc'] for r in rs])
        best_mean, best_std = _mean_std([r['best_acc'] for r in rs])
        ips = [r['images_per_second'] for r in rs
               if r.get('images_per_second') and math.isfinite(r['images_per_second'])]
        table.append(dict(
            model=name, runs=len(rs), final_mean=final_mean, final_std=final_std, best_mean=best_mean,
            best_std=best_std, gap_to_teacher=(final_mean - teacher_mean) if teacher_mean is not None else None,
            images_per_second=statistics.fmean(ips) if ips else None))
    return table


def write_results(result: ExperimentResult, out_dir: Path) -> None:
    make_folder(out_dir)
    for name, text in (('results.json', json.dumps(asdict(result), indent=2)), ('results.md', format_table(result))):
        with atomic_write(out_dir / name, 'w') as f:
            f.write(text)
