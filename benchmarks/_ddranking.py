"""The ``ddranking`` table of ``reproduce.py``: DD-Ranking's label-robust score of distilled sets, next to the DP+KD
columns (the same ``Column`` sets, the same job queue and output folder).

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking/metrics/hard_label.py`` and ``soft_label.py``) scores a set by
training a network on it and on a random class-balanced subset of the real training set of the same size, each at
every lr of its grid (the best kept), and on the whole real training set:

* ``hard`` (``LabelRobustScoreHard``): the set with class labels by position, ``ddranking-hard``; IOR compares the
  set and the random subset under the same hard-label evaluation;
* ``soft`` (``LabelRobustScoreSoft``, mode 'M'): IOR compares them under ``ddranking-soft``, a teacher relabelling
  every CutMix-ed batch (``--ddranking-teacher``: DD-Ranking's teachers are networks trained on the real data);
  HLR still comes from the hard-label runs;
* ``soft-stored`` (mode 'S'): the set's own soft labels (``ddranking-soft-stored``); the random subset is labelled
  once with the teacher's outputs on its un-augmented images (DD-Ranking's ``_generate_soft_labels``, which calls a
  ``teacher_model`` attribute its class never sets: we use the one teacher given).

One job per (column, network, round, data, labels, lr), each a ``run_experiment`` run with its own folder; a round's
scores need all its runs. What differs from DD-Ranking's code, by choice: explicit seeds (round ``r`` trains with
seed ``r`` and draws its random subset with seed ``r``; DD-Ranking seeds from the clock), and the real-data accuracy
is trained once per network (seed 0, ``ddranking-real``, DD-Ranking's CIFAR-10 ConvNet-3 configuration) or given
with ``--real-acc`` (its ``REAL_DATA_ACC_CACHE``), instead of retrained every round.
"""
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _jobs import Job, worker_accelerator

LABEL_MODES = ('hard', 'soft', 'soft-stored')
RECIPES = {'hard': 'ddranking-hard', 'soft': 'ddranking-soft', 'soft-stored': 'ddranking-soft-stored'}
REAL_RECIPE = 'ddranking-real'
SOURCE = ('DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking) scores as its code computes them (ddranking/metrics): accuracies '
          'in percent, best of the evaluations every 10 epochs at the best lr of 0.001-0.1; LRS from percent '
          'differences as its code does, LRS (fractions) as its documentation writes the formula')


def ddranking_jobs(columns: Sequence[Any], nets_of: Dict[str, List[str]], rounds: int, labels: str,
                   epochs: Optional[int], real_acc: Optional[float]) -> List[Job]:
    """The table's runs, round by round (a round's scores need all its runs), the real-data runs first."""
    from timm_dd.train.ddranking import LR_GRID
    jobs: List[Job] = []
    kinds = [('syn', 'hard'), ('rdm', 'hard')] + ([('syn', labels), ('rdm', labels)] if labels != 'hard' else [])
    for column in columns:
        for net in nets_of[column.name]:
            if real_acc is None:
                jobs.append(Job(f'{column.name}/ddranking/{net}/real',
                                dict(kind='real', column=column, net=net, epochs=epochs)))
    for r in range(rounds):
        for column in columns:
            for net in nets_of[column.name]:
                for data, label_kind in kinds:
                    for lr in LR_GRID:
                        jobs.append(Job(f'{column.name}/ddranking/{net}/round{r}/{data}-{label_kind}/lr{lr:g}',
                                        dict(kind='ddranking', column=column, net=net, round=r, data=data,
                                             labels=label_kind, lr=lr, epochs=epochs)))
    return jobs


def _overrides(epochs: Optional[int]) -> Dict[str, Any]:
    return {} if epochs is None else {'epochs': epochs, 'eval_every': 0}


def real_bundles(columns: Sequence[Any], dataset: str) -> Dict[str, Any]:
    """The whole real training set (and test set) in each column's image space: random subsets and real runs."""
    from timm_dd.train import prepare_data
    out = {}
    for space in sorted({c.image_space or 'normalized' for c in columns}):
        out[f'real:{space}'] = prepare_data(real_ipc=-1, dataset=dataset, image_space=space)
    return out


class DDRankingRunner:
    """Runs one job of the table on a worker's accelerator; data from the file the parent wrote (memory-mapped)."""

    def __init__(self, out: Path, data_file: Path, cpu: bool, model_kwargs: Optional[Dict[str, Any]],
                 teacher: Optional[str]):
        self.out, self.data_file, self.cpu, self.model_kwargs, self.teacher = out, data_file, cpu, model_kwargs, teacher

    def estimate(self, job: Job) -> Optional[float]:
        return None

    def setup(self, worker: int):
        import torch
        self.worker, self.accelerator = worker, worker_accelerator(worker, self.cpu)
        self.bundles = torch.load(self.data_file, weights_only=False, mmap=True)  # our own file, written just now
        return self.run

    def _data(self, spec: Dict[str, Any]):
        from timm_dd.data import select_ipc
        from timm_dd.data.sets import DataSplits
        from timm_dd.seeding import generator_for
        from timm_dd.train.ddranking import with_class_labels
        column = spec['column']
        real = self.bundles[f"real:{column.image_space or 'normalized'}"]
        if spec['kind'] == 'real':
            return real
        if spec['data'] == 'syn':
            syn = self.bundles[column.name]
            return with_class_labels(syn, column.ipc) if spec['labels'] == 'hard' else syn
        idx = select_ipc(real.train.labels, column.ipc, generator=generator_for(spec['round']),
                         num_classes=real.num_classes)
        subset = real.train.subset(idx)
        if spec['labels'] == 'soft-stored':  # labelled once by the teacher, as DD-Ranking labels its random data
            subset = replace(subset, labels=self._teacher_probs(subset.images))
        return DataSplits(subset, real.test, real.name,
                          f"{column.ipc} random real images per class (round {spec['round']})",
                          dict(real.source, ipc=column.ipc, seed=spec['round']))

    def _teacher_probs(self, images):
        """``softmax(teacher(x) / 1)`` on un-augmented images (temperature 1: the soft recipes' own)."""
        import torch
        from timm_dd.hub import load_teacher
        teacher = load_teacher(self.teacher).to(self.accelerator.device).eval()
        with torch.inference_mode():
            logits = torch.cat([teacher(x.to(self.accelerator.device)) for x in images.split(256)])
        return torch.softmax(logits.float(), dim=1).cpu()

    def run(self, job: Job) -> Dict[str, Any]:
        from timm_dd.train import run_experiment
        from timm_dd.train.config import load_config
        spec = job.spec
        if spec['kind'] == 'real':
            recipe, settings, seed = REAL_RECIPE, {}, 0
        else:
            recipe, seed = RECIPES[spec['labels']], spec['round']
            settings = dict(lr=spec['lr'], **({'teacher': self.teacher} if spec['labels'] == 'soft' else {}))
        cfg = load_config(recipe, {**_overrides(spec['epochs']), **settings})
        result = run_experiment(cfg, [spec['net']], [seed], self._data(spec), self.out / job.key, self.accelerator,
                                model_kwargs=self.model_kwargs, resume=True)
        run = result.runs[0]
        return dict({k: v for k, v in spec.items() if k != 'column'}, column=spec['column'].name, recipe=recipe,
                    final_acc=run['final_acc'], best_acc=run['best_acc'], device=str(self.accelerator.device),
                    worker=self.worker)


def assemble_ddranking(records: List[Dict[str, Any]], columns: Sequence[Any], nets_of: Dict[str, List[str]],
                       rounds: int, labels: str, real_acc: Optional[float], jobs: Sequence[Job],
                       protocol: str) -> Dict[str, Any]:
    """One line per (column, network): the accuracies and the scores over the finished rounds."""
    from timm_dd.train.ddranking import LR_GRID, mean_std, score_rounds, search_lr
    rows = []
    for column in columns:
        for net in nets_of[column.name]:
            mine = [r for r in records if r.get('column') == column.name and r.get('net') == net]
            real = real_acc if real_acc is not None else next(
                (100 * r['best_acc'] for r in mine if r['kind'] == 'real'), None)
            finished = []
            for rnd in range(rounds):
                accs = {}
                for data, label_kind in {('syn', 'hard'), ('rdm', 'hard'), ('syn', labels), ('rdm', labels)}:
                    grid = {r['lr']: 100 * r['best_acc'] for r in mine if r['kind'] == 'ddranking'
                            and (r['round'], r['data'], r['labels']) == (rnd, data, label_kind)}
                    if len(grid) == len(LR_GRID):
                        accs[f'{data}_{label_kind}'], accs[f'{data}_{label_kind}_lr'] = search_lr(grid)
                if len(accs) == 2 * len({('syn', 'hard'), ('rdm', 'hard'), ('syn', labels), ('rdm', labels)}):
                    finished.append(accs)
            line: Dict[str, Any] = dict(column=column.name, net=net, labels=labels, rounds=len(finished),
                                        rounds_planned=rounds, real_hard=real)
            if finished and real is not None:
                rounds_any = [dict(syn_hard=a['syn_hard'], syn_any=a[f'syn_{labels}'], rdm_any=a[f'rdm_{labels}'])
                              for a in finished]
                scores = score_rounds(rounds_any, real)
                line.update(hlr=scores['hard_label_recovery'], ior=scores['improvement_over_random'],
                            lrs=scores['label_robust_score'],
                            lrs_fraction=score_rounds(rounds_any, real, accuracy_unit='fraction')['label_robust_score'])
                for key in ('syn_hard', f'syn_{labels}', f'rdm_{labels}'):
                    line[key] = mean_std(a[key] for a in finished)
                    line[f'{key}_lrs'] = sorted({a[f'{key}_lr'] for a in finished})
            rows.append(line)
    pending = [j.key for j in jobs if not any(r.get('key') == j.key for r in records)]
    settings = dict(hard=RECIPES['hard'], real=REAL_RECIPE if real_acc is None else f'given: {real_acc} %',
                    **({labels: RECIPES[labels]} if labels != 'hard' else {}), lr_grid=list(LR_GRID),
                    random_subsets='class-balanced, seed = round', seeds='round r trains with seed r')
    return dict(table='ddranking', labels=labels, protocol=protocol, published_source=SOURCE, settings=settings,
                real_acc_given=real_acc, rows=rows, complete=not pending, pending=pending,
                columns=[dict(name=c.name, data=c.data, description=c.description) for c in columns],
                devices=sorted({r['device'] for r in records if r.get('device')}))


def _pm(value: Optional[tuple], digits: int = 2) -> str:
    return '' if value is None else f'{value[0]:.{digits}f} ± {value[1]:.{digits}f}'


def ddranking_markdown(report: Dict[str, Any]) -> str:
    status = 'complete' if report['complete'] else f"PARTIAL: {len(report['pending'])} runs not finished"
    labels = report['labels']
    accs = ['syn_hard', *([f'syn_{labels}'] if labels != 'hard' else []), f'rdm_{labels}']
    names = {'syn_hard': 'syn (hard)', f'syn_{labels}': f'syn ({labels})', f'rdm_{labels}': f'random ({labels})'}
    lines = [f"Table `ddranking` ({status}), {labels}-label evaluation; {report['protocol']}; runs made on "
             f"{', '.join(report['devices']) or '-'}.", f"Scores: {report['published_source']}. Mean ± std "
             f"(population, as DD-Ranking prints) over the finished rounds; accuracies in %.",
             f"Settings: {report['settings']}.", '',
             '| set | network | real (hard) | ' + ' | '.join(names[a] for a in accs) +
             ' | HLR | IOR | LRS | LRS (fractions) | rounds |', '|' + '---|' * (8 + len(accs))]
    for r in report['rows']:
        real = '' if r['real_hard'] is None else f"{r['real_hard']:.2f}"
        cells = [r['column'], r['net'], real, *(_pm(r.get(a)) for a in accs), _pm(r.get('hlr')), _pm(r.get('ior')),
                 _pm(r.get('lrs'), 4), _pm(r.get('lrs_fraction'), 4), f"{r['rounds']}/{r['rounds_planned']}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
