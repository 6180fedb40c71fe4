"""benchmarks/reproduce.py and its run queue: a published table with our numbers beside it, filled run by run."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
reproduce = importlib.import_module('reproduce')
jobs_mod = importlib.import_module('_jobs')


@pytest.mark.parametrize('table', ['dpkd', 'cross-arch'])
def test_reproduce_smoke_writes_both_columns(tmp_path, table):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', TIMM_DD_CACHE=str(tmp_path / 'cache'))
    extra = ['--source', 'mtt'] if table == 'dpkd' else ['--method', 'MTT']
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'reproduce.py'), '--smoke', '--table', table,
                           *extra, '--output', str(tmp_path / 'out')], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / 'out' / 'reproduce.json').read_text())
    assert 'SHORTENED to 1 epochs' in report['protocol'] and report['published_source']
    rows = report['rows']
    if table == 'dpkd':
        assert [r['row'] for r in rows] == ['Baseline', 'w/o DP&KD', 'w/o DP', 'w/o KD', 'Full']
        assert rows[0]['published'] == 48.9 and rows[-1]['published'] == 67.4  # ResNet18 on MTT IPC 10
        assert rows[1]['published'] is None  # no number in the source: left empty, not guessed
        assert rows[-1]['recipe'] == 'dpkd-mtt'
        assert report['complete'] and not report['pending']
        assert all(r['runs'] == 1 and 0 <= r['final_mean'] <= 1 for r in rows)
        md = (tmp_path / 'out' / 'reproduce.md').read_text()
        assert '| Baseline | `dpkd-baseline` | resnet18_dd |' in md and 'final' in md and 'best' in md
        # every row ran with the source's settings (MTT: instance-norm students), not the recipe's own
        cfg = json.loads((tmp_path / 'out' / 'mtt-ipc10' / 'dpkd-baseline' / 'resnet18_dd' / 'seed0' /
                          'run_config.json').read_text())['config']
        assert cfg['student_norm'] == 'instance' and cfg['recipe'] == 'dpkd-baseline'
    else:
        assert rows[0]['net'] == 'convnet3' and rows[0]['published'] == '64.3 ± 0.7'
    assert all('±' in r['ours'] for r in rows)


def test_table_fills_run_by_run(tmp_path, monkeypatch):
    """A finished run is never redone; a missing one is run on the next invocation; a teacher recorded as finished
    whose network is gone is trained again."""
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'out'
    args = ['--smoke', '--rows', 'Baseline', 'Full', '--output', str(out)]
    assert reproduce.main(args) == 0
    base = out / 'mtt-ipc10' / 'dpkd-baseline' / 'resnet18_dd' / 'seed0' / 'job.json'
    full = out / 'mtt-ipc10' / 'dpkd-mtt' / 'resnet18_dd' / 'seed0' / 'job.json'
    teacher = out / 'mtt-ipc10' / 'teacher'
    first = {p: p.read_text() for p in (base, full, teacher / 'job.json')}
    full.unlink()
    assert reproduce.main(args) == 0
    assert base.read_text() == first[base] and (teacher / 'job.json').read_text() == first[teacher / 'job.json']
    assert json.loads(full.read_text())['key'] == 'mtt-ipc10/dpkd-mtt/resnet18_dd/seed0'
    # results copied without the teacher's weights: the teacher is a job again, and comes back
    import shutil
    shutil.rmtree(teacher / 'model')
    assert reproduce.main(args) == 0
    assert (teacher / 'model' / 'config.json').is_file() and (teacher / 'job.json').is_file()
    assert base.read_text() == first[base]
    report = json.loads((out / 'reproduce.json').read_text())
    assert report['complete'] and [r['row'] for r in report['rows']] == ['Baseline', 'Full']
    assert not list(out.glob('.claims-*'))  # an invocation removes its own claims
    # an invocation for one cell adds to the table: the cells other invocations finished stay in it
    assert reproduce.main(['--smoke', '--rows', 'Full', '--report-only', '--output', str(out)]) == 0
    report = json.loads((out / 'reproduce.json').read_text())
    assert [(r['row'], r['runs']) for r in report['rows']] == [('Baseline', 1), ('Full', 1)]


def _record(column, row, net, seed, acc, recipe='dpkd-baseline'):
    key = f'{column}/{recipe}/{net}/seed{seed}'
    return dict(kind='student', key=key, column=column, row=row, recipe=recipe, net=net, seed=seed, final_acc=acc,
                best_acc=acc + 0.01, seconds=10.0, teacher_acc=None)


def test_table_assembly_means_partial_rows_and_published_numbers():
    column = reproduce.Column('mtt', 10, 'set', 'mtt', 'zca', 'teacher.pth')
    jobs = reproduce.dpkd_jobs([column], ['Baseline', 'Full'], ['resnet18_dd', 'vgg11_dd'], [0, 1], None)
    assert [j.key for j in jobs][:2] == ['mtt-ipc10/dpkd-mtt/resnet18_dd/seed0', 'mtt-ipc10/dpkd-mtt/vgg11_dd/seed0']
    assert all(not j.needs for j in jobs)  # the released teacher needs no teacher job
    records = [_record('mtt-ipc10', 'Baseline', 'resnet18_dd', 0, 0.40), _record('mtt-ipc10', 'Baseline',
                                                                                 'resnet18_dd', 1, 0.50),
               dict(_record('mtt-ipc10', 'Full', 'vgg11_dd', 0, 0.60, 'dpkd-mtt'), teacher_acc=0.605)]
    report = reproduce.assemble_dpkd(records, [column], jobs, 'cifar10', 'full published schedules')
    rows = {(r['row'], r['net']): r for r in report['rows']}
    assert list(rows) == [('Baseline', 'resnet18_dd'), ('Baseline', 'vgg11_dd'), ('Full', 'resnet18_dd'),
                          ('Full', 'vgg11_dd')]
    assert rows[('Baseline', 'resnet18_dd')]['ours'] == '45.0 ± 7.1' and rows[('Baseline', 'resnet18_dd')]['runs'] == 2
    assert rows[('Baseline', 'resnet18_dd')]['best'] == '46.0 ± 7.1'
    assert 'ours' not in rows[('Baseline', 'vgg11_dd')] and rows[('Baseline', 'vgg11_dd')]['published'] == 52.6
    assert not report['complete'] and len(report['pending']) == 5
    assert report['notes'] == ["mtt-ipc10: the authors' released teacher (convnet3) on this data path: 60.5 %; "
                               "the paper's 3-layer CNN: 63.6, offset -3.1"]
    md = reproduce.to_markdown(report)
    assert 'PARTIAL: 5 runs not finished' in md
    assert '| Full | `dpkd-mtt` | vgg11_dd | 60.0 ± 0.0 | 61.0 ± 0.0 | 1/2 | 67.1 |' in md


def test_a_source_without_a_released_teacher_trains_one_first():
    column = reproduce.Column('frepo', 10, 'set', 'frepo', 'zca', None)
    jobs = reproduce.dpkd_jobs([column], ['Baseline', 'w/o DP', 'Full'], None, [0], None)
    assert jobs[0].key == 'frepo-ipc10/teacher'
    needs = {j.spec['row']: j.needs for j in jobs[1:]}
    assert needs == {'Baseline': (), 'w/o DP': ('frepo-ipc10/teacher',), 'Full': ('frepo-ipc10/teacher',)}
    nets = [j.spec['net'] for j in jobs[1:] if j.spec['row'] == 'Full']
    assert nets[0] == 'resnet50_dd' and 'convnet3_frepo' in nets  # longest first; FRePo's own ConvNet


def test_authors_folder_gives_the_columns_it_ships(tmp_path):
    for name in ('cifar10_10_mtt', 'cifar10_10_frepo'):
        (tmp_path / 'distilled_data' / name).mkdir(parents=True)
        (tmp_path / 'distilled_data' / name / 'images_best.pt').write_bytes(b'')
    (tmp_path / 'snapshots' / 'cifar10_10_mtt_convnet').mkdir(parents=True)
    (tmp_path / 'snapshots' / 'cifar10_10_mtt_convnet' / 'checkpoint_best.pth').write_bytes(b'')
    columns = reproduce.authors_columns(tmp_path)
    assert [(c.name, c.layout, c.image_space) for c in columns] == [('mtt-ipc10', 'mtt', 'zca'),
                                                                      ('frepo-ipc10', 'frepo', 'zca')]
    assert columns[0].teacher_checkpoint.endswith('checkpoint_best.pth') and columns[1].teacher_checkpoint is None
    with pytest.raises(SystemExit, match='holds no distilled_data'):
        reproduce.authors_columns(tmp_path / 'snapshots')


class _Runner:
    def setup(self, worker):
        return self.run

    def estimate(self, job):
        return job.spec.get('seconds')

    def run(self, job):
        if job.key == 'bad':
            raise RuntimeError('boom')
        return dict(value=job.spec['value'])


def test_queue_records_failures_and_skips_what_depends_on_them(tmp_path):
    Job = jobs_mod.Job
    jobs = [Job('bad', dict(value=0)), Job('after-bad', dict(value=1), needs=('bad',)), Job('ok', dict(value=2))]
    status = jobs_mod.run_queue(tmp_path, jobs, _Runner(), workers=1)
    assert status['pending'] == ['bad', 'after-bad']
    assert json.loads((tmp_path / 'ok' / 'job.json').read_text())['value'] == 2
    assert 'boom' in json.loads((tmp_path / 'bad' / 'job_failed.json').read_text())['error']
    assert not (tmp_path / 'after-bad').exists()


def test_two_claims_never_take_the_same_job(tmp_path):
    Job = jobs_mod.Job
    jobs = [Job('a', {}), Job('b', {}), Job('c', {}, needs=('a',))]
    claims = tmp_path / '.claims'
    claims.mkdir()
    first, _ = jobs_mod._claim(tmp_path, claims, jobs)
    second, _ = jobs_mod._claim(tmp_path, claims, jobs)
    third, waiting = jobs_mod._claim(tmp_path, claims, jobs)
    assert (first.key, second.key, third) == ('a', 'b', None) and waiting  # c waits for a to finish


def test_no_job_starts_that_cannot_finish_before_the_deadline(tmp_path):
    import time
    Job = jobs_mod.Job
    jobs = [Job('long', dict(value=0, seconds=3600)), Job('short', dict(value=1, seconds=1)),
            Job('unknown', dict(value=2))]
    runner, claims = _Runner(), tmp_path / '.claims'
    claims.mkdir()
    done = jobs_mod.work(tmp_path, claims, jobs, runner.setup(0), deadline=time.time() + 60,
                         estimate=runner.estimate)
    assert done == 2 and not (tmp_path / 'long').exists() and (tmp_path / 'short' / 'job.json').is_file()


def test_ddranking_table_smoke_hard_then_soft_with_a_real_data_teacher(tmp_path, monkeypatch):
    """The ddranking table fills run by run in its own files beside a dpkd table; a soft-label table needs a teacher
    trained on the real data, and relabels with it."""
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'out'
    assert reproduce.main(['--smoke', '--table', 'ddranking', '--output', str(out)]) == 0
    report = json.loads((out / 'ddranking.json').read_text())
    assert report['complete'] and not (out / 'reproduce.json').exists()
    (row,) = report['rows']
    assert row['rounds'] == 1 and row['net'] == 'convnet3' and row['labels'] == 'hard'
    runs = {p.parent.name: json.loads(p.read_text()) for p in (out / 'mtt-ipc1' / 'ddranking' / 'convnet3' /
                                                                 'round0' / 'syn-hard').glob('*/job.json')}
    assert sorted(runs) == ['lr0.001', 'lr0.005', 'lr0.01', 'lr0.05', 'lr0.1']
    best = max(100 * r['best_acc'] for r in runs.values())
    real = 100 * json.loads((out / 'mtt-ipc1' / 'ddranking' / 'convnet3' / 'real' / 'job.json').read_text())['best_acc']
    assert row['syn_hard'][0] == pytest.approx(best) and row['hlr'][0] == pytest.approx(real - best)
    md = (out / 'ddranking.md').read_text()
    assert '| mtt-ipc1 | convnet3 |' in md and 'LRS (fractions)' in md
    with pytest.raises(SystemExit):
        reproduce.main(['--smoke', '--table', 'ddranking', '--ddranking-labels', 'soft', '--output', str(out)])
    from timm_dd.cli.train import main as train_main
    teacher_out = tmp_path / 'teacher'
    assert train_main(['-c', 'ddranking-real', '--dataset', 'digits', '--real-ipc', '-1', '--epochs', '1',
                       '--models', 'convnet3', '--model-kwargs', 'width=4', '--save-models', '--cpu',
                       '--output', str(teacher_out)]) == 0
    teacher = teacher_out / 'runs' / 'convnet3' / 'seed0' / 'model'
    assert reproduce.main(['--smoke', '--table', 'ddranking', '--ddranking-labels', 'soft', '--ddranking-teacher',
                           str(teacher), '--output', str(out)]) == 0
    report = json.loads((out / 'ddranking.json').read_text())
    assert report['complete'] and report['rows'][0]['labels'] == 'soft' and 'syn_soft' in report['rows'][0]
    cfg = json.loads((out / 'mtt-ipc1' / 'ddranking' / 'convnet3' / 'round0' / 'rdm-soft' / 'lr0.01' /
                      'run_config.json').read_text())['config']
    assert cfg['relabel'] and cfg['teacher'] == str(teacher) and cfg['soft_loss'] == 'kl'


def test_ddranking_scores_use_the_best_lr_of_complete_rounds_only():
    ddr = importlib.import_module('_ddranking')
    column = reproduce.Column('mtt', 10, 'set')
    grid = (0.001, 0.005, 0.01, 0.05, 0.1)

    def runs(rnd, data, accs):
        return [dict(kind='ddranking', column='mtt-ipc10', net='convnet3', round=rnd, data=data, labels='hard',
                     lr=lr, best_acc=a, key=f'{rnd}{data}{lr}') for lr, a in zip(grid, accs)]
    records = (runs(0, 'syn', [0.50, 0.60, 0.60, 0.55, 0.1]) + runs(0, 'rdm', [0.3, 0.4, 0.2, 0.2, 0.2]) +
               runs(1, 'syn', [0.58, 0.1, 0.1, 0.1, 0.1]) + runs(1, 'rdm', [0.26, 0.1, 0.1, 0.1, 0.1]) +
               runs(2, 'syn', [0.9] * 5))  # round 2 has no random runs yet: not scored
    report = ddr.assemble_ddranking(records, [column], {'mtt-ipc10': ['convnet3']}, 3, 'hard', 80.0, [], 'p')
    (row,) = report['rows']
    assert row['rounds'] == 2 and row['syn_hard_lrs'] == [0.001, 0.005]  # ties keep the smaller lr
    assert row['syn_hard'] == pytest.approx((59.0, 1.0)) and row['rdm_hard'] == pytest.approx((33.0, 7.0))
    assert row['hlr'] == pytest.approx((21.0, 1.0)) and row['ior'] == pytest.approx((26.0, 6.0))
    import math
    lrs = [(math.exp(0.5 * ior - 0.5 * hlr) - math.exp(-1)) / (math.e - math.exp(-1)) for ior, hlr in ((20, 20),
                                                                                                    (32, 22))]
    assert row['lrs'][0] == pytest.approx(sum(lrs) / 2)


def test_ddranking_soft_stored_scores_a_sets_own_soft_labels(tmp_path, monkeypatch):
    """Mode 'S': the set's soft labels train the student; the random subsets are labelled once by the teacher."""
    import torch
    monkeypatch.setenv('TIMM_DD_CACHE', str(tmp_path / 'cache'))
    from timm_dd.cli.train import main as train_main
    assert train_main(['-c', 'ddranking-real', '--dataset', 'digits', '--real-ipc', '-1', '--epochs', '1',
                       '--models', 'convnet3', '--model-kwargs', 'width=4', '--save-models', '--cpu',
                       '--output', str(tmp_path / 'teacher')]) == 0
    teacher = str(tmp_path / 'teacher' / 'runs' / 'convnet3' / 'seed0' / 'model')
    smoke = reproduce._smoke_set(tmp_path / 'set')
    common = ['--table', 'ddranking', '--dataset', 'digits', '--layout', 'mtt', '--image-space', 'normalized',
              '--ipc', '1', '--epochs', '1', '--rounds', '1', '--cpu', '--model-kwargs', '{"width": 4}',
              '--ddranking-labels', 'soft-stored', '--ddranking-teacher', teacher, '--real-acc', '90']
    with pytest.raises(SystemExit, match='hard labels'):
        reproduce.main(['--data', str(smoke), *common, '--output', str(tmp_path / 'hard')])
    torch.save(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)), smoke / 'labels_best.pt')
    out = tmp_path / 'out'
    assert reproduce.main(['--data', str(smoke), *common, '--output', str(out)]) == 0
    (row,) = json.loads((out / 'ddranking.json').read_text())['rows']
    assert row['rounds'] == 1 and 'syn_soft-stored' in row and row['real_hard'] == 90.0
    run = out / 'mtt-ipc1' / 'ddranking' / 'convnet3' / 'round0' / 'rdm-soft-stored' / 'lr0.01'
    cfg = json.loads((run / 'run_config.json').read_text())['config']
    assert cfg['recipe'] == 'ddranking-soft-stored' and not cfg['relabel'] and cfg['soft_loss'] == 'kl'
