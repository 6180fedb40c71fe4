"""The command-line convention shared by train.py / timm-dd-train and distill.py / timm-dd-distill."""
import warnings

import pytest
import yaml

from timm_dd.cli import distill as distill_cli
from timm_dd.cli import train as train_cli
from timm_dd.cli.common import apply_deprecations
from user_files import changed_user_files, write_user_files


def test_set_is_typed_and_repeatable():
    args, cfg = train_cli.resolve_config(['-c', 'dpkd', '--model', 'convnet3', '--set', 'lr=1e-5', '--set',
                                          'epochs=7', 'dsa=false', '--set', 'betas=[0.9, 0.99]'])
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.epochs == 7 and cfg.dsa is False and cfg.betas == (0.9, 0.99)  # every --set applied
    with pytest.raises(ValueError, match=r"epochs='many' is not a valid int"):
        train_cli.resolve_config(['--model', 'convnet3', '--set', 'epochs=many'])
    with pytest.raises(ValueError, match=r'--set lr_milestones=\[1 is not valid YAML: .*write lists as \[1, 2\]'):
        train_cli.resolve_config(['--model', 'convnet3', '--set', 'lr_milestones=[1'])
    _, dcfg = distill_cli.resolve_config(['distill', '-c', 'digits-ipc10-att', '--set', 'lr_img=1e3',
                                          '--set', 'ipc=2', '--output', 'x'])
    assert dcfg.lr_img == 1000.0 and dcfg.ipc == 2


def test_first_hour_flags_reach_the_recipe():
    _, cfg = train_cli.resolve_config(['-c', 'baseline', '--model', 'resnet18_dd', '--recompute-bn',
                                       '--keep-checkpoints'])
    assert cfg.recompute_bn is True and cfg.keep_checkpoints is True
    _, cfg = train_cli.resolve_config(['-c', 'baseline', '--model', 'resnet18_dd'])
    assert cfg.recompute_bn is False and cfg.keep_checkpoints is False  # off in the published recipes


def test_flags_win_over_the_config_file_and_set_over_the_recipe(tmp_path):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(yaml.safe_dump({'base': 'dpkd', 'epochs': 11, 'models': ['resnet18_dd'], 'seeds': [3, 4]}))
    args, cfg = train_cli.resolve_config(['-c', str(recipe), '--epochs', '12'])
    assert cfg.epochs == 12 and cfg.opt == 'lion'  # the flag wins; the rest comes from the base recipe
    assert args.models == ['resnet18_dd'] and args.seeds == [3, 4]  # any flag can live in the YAML
    assert cfg.recipe == 'mine'


def test_args_yaml_round_trips_through_c(tmp_path, capsys):
    out = tmp_path / 'run'
    rc = train_cli.main(['-c', 'dpkd', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                         '--model-kwargs', 'width=4', '--epochs', '1', '--final-epochs', '1', '--period', '1',
                         '--teacher-epochs', '1', '--set', 'lr=2e-5', '--output', str(out), '--no-plots', '--cpu'])
    assert rc == 0, capsys.readouterr().err
    args, cfg = train_cli.resolve_config(['-c', str(out / 'args.yaml')])
    _, first = train_cli.resolve_config(['-c', 'dpkd', '--epochs', '1', '--final-epochs', '1', '--period', '1',
                                         '--teacher-epochs', '1', '--set', 'lr=2e-5', '--model', 'convnet3'])
    assert cfg.to_dict() == first.to_dict()
    assert args.model == 'convnet3' and args.dataset == 'digits' and args.real_ipc == 1
    assert args.output == str(out)


def _help(parser_fn, argv, capsys):
    with pytest.raises(SystemExit):
        parser_fn(argv)
    return capsys.readouterr().out


def test_each_subcommand_help_shows_only_its_own_flags(capsys):
    parse = lambda argv: distill_cli.build_parser().parse_args(argv)  # noqa: E731
    experts = _help(parse, ['experts', '--help'], capsys)
    distill = _help(parse, ['distill', '--help'], capsys)
    presets = _help(parse, ['presets', '--help'], capsys)
    assert '--output' in experts and '--experts' not in experts and '--resume' not in experts
    assert '--experts' in distill and '--resume' in distill and '--grad-mode' in distill
    assert '--show' in presets and '--output' not in presets
    top = _help(parse, ['--help'], capsys)
    assert 'experts' in top and 'distill' in top and 'presets' in top


def test_deprecated_spellings_warn_and_work():
    with pytest.warns(FutureWarning, match='--out is deprecated'):
        argv = apply_deprecations(['experts', '--out', 'x'])
    assert argv == ['experts', '--output', 'x']
    with pytest.warns(FutureWarning, match='--drop-path is deprecated'):
        args, cfg = train_cli.resolve_config(apply_deprecations(['-c', 'baseline', '--drop-path', '--model', 'm']))
    assert cfg.drop_path is True
    with pytest.warns(FutureWarning, match='--data is deprecated'):
        argv = apply_deprecations(['experts', '--data', 'folder'], distill_cli.DEPRECATED)
    assert argv == ['experts', '--dataset', 'folder']
    with pytest.warns(FutureWarning, match="opt 'sgd' is deprecated"):
        _, cfg = train_cli.resolve_config(['--set', 'opt=sgd', '--model', 'm'])
    assert cfg.opt == 'momentum'
    with pytest.warns(FutureWarning, match="opt 'sgd' is deprecated"):  # the flag, as its help says
        _, cfg = train_cli.resolve_config(['--opt', 'sgd', '--model', 'm'])
    assert cfg.opt == 'momentum'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        train_cli.resolve_config(['-c', 'baseline', '--keep-rate-schedule', '--model', 'm'])  # no warning


def test_presets_lists_sources_and_shows_settings(capsys):
    assert distill_cli.main(['presets']) == 0
    out = capsys.readouterr().out
    assert 'cifar10-ipc10-mtt' in out and 'DC-Bench' in out
    assert distill_cli.main(['presets', '--show', 'cifar10-ipc10-mtt']) == 0
    out = capsys.readouterr().out
    assert '* syn_steps: 30' in out and '* zca: true' in out


def _event_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in folder.rglob('events.out.tfevents.*'):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags |= set(acc.Tags().get('scalars', [])) | set(acc.Tags().get('images', []))
    return tags


def test_log_with_tensorboard_writes_the_logged_keys(tmp_path, capsys):
    pytest.importorskip('tensorboard')
    out = tmp_path / 'train'
    assert train_cli.main(['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                           '--model-kwargs', 'width=4', '--epochs', '2', '--eval-every', '1', '--output', str(out),
                           '--no-plots', '--cpu', '--log-with', 'tensorboard']) == 0, capsys.readouterr().err
    tags = _event_tags(out / 'trackers')
    assert {'convnet3 seed 0/loss', 'convnet3 seed 0/test_acc', 'convnet3 seed 0/lr'} <= tags, tags
    common = ['-c', 'digits-ipc10-att', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}', '--set', 'ipc=2',
              '--set', 'num_experts=1', '--set', 'expert_train_epochs=3', '--set', 'syn_steps=2', '--set',
              'max_start_epoch=1', '--cpu', '--log-with', 'tensorboard']
    assert distill_cli.main(['experts', *common, '--output', str(tmp_path / 'buf')]) == 0
    assert 'expert_00000/loss' in _event_tags(tmp_path / 'buf' / 'trackers')
    assert distill_cli.main(['distill', *common, '--experts', str(tmp_path / 'buf'), '--output', str(tmp_path / 'd'),
                             '--iterations', '2', '--set', 'eval_every=1', '--set', 'eval_epochs=1']) == 0
    tags = _event_tags(tmp_path / 'd' / 'trackers')
    assert {'att/loss', 'att/syn_lr', 'att/n_opt', 'eval/acc_mean', 'distilled images'} <= tags, tags


def test_readme_cli_table_matches_help(capsys):
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    table = readme.split('## Command lines', 1)[1].split('\n## ', 1)[0]
    flags = set()
    for line in table.splitlines():
        if line.startswith('| `'):
            first_cell = re.split(r'(?<!\\)\|', line)[1]
            flags |= set(re.findall(r'`(--?[a-z][a-z-]*)', first_cell)) | set(re.findall(r'/ `(--?[a-z][a-z-]*)', first_cell))
    assert {'-c', '--output', '--dataset', '--data', '--seed', '--seeds', '--set', '--log-level', '--log-with',
            '--cpu', '--resume', '--force-resume'} <= flags
    train_help = _help(lambda a: train_cli.build_parser().parse_args(a), ['--help'], capsys)
    distill_help = _help(lambda a: distill_cli.build_parser().parse_args(a), ['distill', '--help'], capsys)
    for flag in flags:
        assert flag in train_help or flag in distill_help, flag
    for flag in flags - {'--data', '--seeds', '--resume', '--force-resume'}:
        assert flag in distill_help, flag  # the shared ones are shared


def test_distill_args_yaml_round_trips(tmp_path):
    argv = ['distill', '-c', 'digits-ipc10-dm', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}',
            '--set', 'ipc=1', '--iterations', '1', '--no-eval', '--output', str(tmp_path / 'd'), '--cpu']
    assert distill_cli.main(argv) == 0
    args, cfg = distill_cli.resolve_config(['distill', '-c', str(tmp_path / 'd' / 'args-distill.yaml')])
    _, first = distill_cli.resolve_config(argv)
    assert cfg.to_dict() == first.to_dict() and cfg.iterations == 1 and cfg.ipc == 1
    assert args.output == str(tmp_path / 'd') and args.no_eval and args.cpu


def test_allocator_tip_only_where_page_faults_are_likely(monkeypatch):
    import sys

    import torch

    from timm_dd.cli.distill import _page_faults_likely
    cpu = torch.device('cpu')
    monkeypatch.setattr(sys, 'platform', 'linux')
    monkeypatch.delenv('LD_PRELOAD', raising=False)
    assert _page_faults_likely(cpu, 'mtt') and _page_faults_likely(cpu, 'att')
    assert not _page_faults_likely(cpu, 'dm') and not _page_faults_likely(torch.device('cuda'), 'mtt')
    monkeypatch.setenv('LD_PRELOAD', '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2')
    assert not _page_faults_likely(cpu, 'mtt')
    monkeypatch.delenv('LD_PRELOAD')
    monkeypatch.setattr(sys, 'platform', 'darwin')
    assert not _page_faults_likely(cpu, 'mtt')


def test_commands_leave_a_users_files_in_the_output_folder_as_they_were(tmp_path, capsys):
    """Issue "Reliability II": train, experts, distill, convert and a resumed train into folders holding user files of every
    suspicious name (temporary-looking, lock, set-aside folders, in subfolders): each file stays byte-identical."""
    folders = {k: tmp_path / k for k in ('train', 'buf', 'distill', 'convert')}
    for folder in folders.values():
        write_user_files(folder)
    train = ['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3', '--model-kwargs',
             'width=4', '--epochs', '2', '--eval-every', '0', '--output', str(folders['train']), '--no-plots', '--cpu']
    assert train_cli.main(train) == 0, capsys.readouterr().err
    assert train_cli.main([*train, '--resume']) == 0, capsys.readouterr().err
    common = ['-c', 'digits-ipc10-att', '--set', 'image_size=8', '--set', 'model_kwargs={width: 4}', '--set', 'ipc=2',
              '--set', 'num_experts=1', '--set', 'expert_train_epochs=2', '--set', 'syn_steps=2', '--set',
              'max_start_epoch=1', '--cpu']
    assert distill_cli.main(['experts', *common, '--output', str(folders['buf'])]) == 0
    assert distill_cli.main(['distill', *common, '--experts', str(folders['buf']), '--output',
                             str(folders['distill']), '--iterations', '2', '--set', 'eval_every=0']) == 0
    import torch
    from timm_dd.distilled import DistilledSet
    dset = DistilledSet.load(folders['distill'] / 'distilled')
    (tmp_path / 'mtt').mkdir()
    torch.save(dset.images, tmp_path / 'mtt' / 'images_best.pt')
    torch.save(dset.labels, tmp_path / 'mtt' / 'labels_best.pt')
    convert = ['convert', str(tmp_path / 'mtt'), '--layout', 'mtt', '--dataset', 'digits', '--image-space',
               dset.image_space, '--lr', '0.01', '--output', str(folders['convert'])]
    assert distill_cli.main(convert) == 2 and 'not part of a distilled set' in capsys.readouterr().err
    for folder in folders.values():
        assert not changed_user_files(folder), folder


def test_a_set_without_checksums_trains_with_a_note_in_the_results(tmp_path, capsys):
    """Issue "Reliability II": an unverifiable set is said so where the numbers are, not only in a log line."""
    import json

    import torch
    from timm_dd.distilled import DistilledSet
    g = torch.Generator().manual_seed(0)
    folder = DistilledSet(images=torch.randn(20, 1, 8, 8, generator=g), labels=torch.arange(10).repeat_interleave(2),
                          class_names=[str(i) for i in range(10)], method='MTT', source_dataset='digits', ipc=2,
                          image_space='normalized', normalization={'mean': [0.5], 'std': [0.3]},
                          lr=None).save(tmp_path / 'set')  # as MTT/ATT sets import: no learned lr on disk
    config = json.loads((folder / 'distill_config.json').read_text())
    del config['sha256']
    (folder / 'distill_config.json').write_text(json.dumps(config))
    out = tmp_path / 'o'
    assert train_cli.main(['-c', 'baseline', '--data', str(folder), '--dataset', 'digits', '--model', 'convnet3',
                           '--model-kwargs', 'width=4', '--epochs', '1', '--output', str(out), '--no-plots',
                           '--cpu']) == 0, capsys.readouterr().err
    notes = json.loads((out / 'results.json').read_text())['notes']
    assert any('distilled.safetensors has no sha256' in n for n in notes), notes
    assert 'has no sha256' in (out / 'results.md').read_text()
    # issue "Fidelity II": the baseline protocol's learned lr is missing: the fallback is said where the numbers are
    assert any('no learned lr' in n and 'lr_fallback=0.01' in n for n in notes), notes
    assert train_cli.main(['-c', 'baseline', '--data', str(folder), '--dataset', 'digits', '--model', 'convnet3',
                           '--model-kwargs', 'width=4', '--epochs', '1', '--lr', '0.02', '--output', str(tmp_path / 'l'),
                           '--no-plots', '--cpu']) == 0, capsys.readouterr().err
    assert not any('learned lr' in n for n in json.loads((tmp_path / 'l' / 'results.json').read_text())['notes'])


def test_ctrl_c_exits_130_with_one_line_and_resume_finishes_the_run(tmp_path):
    """Issue "Reliability II": Ctrl-C during training is one ``error: interrupted ...`` line saying how to continue
    (exit 130, no traceback), the checkpoint is kept, ``--resume`` finishes the same run, and the user's files in
    the output folder are byte-identical throughout."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'o'
    out.mkdir()
    write_user_files(out)  # an existing folder of the user's: interrupted and resumed, its files stay as they were
    argv = [sys.executable, str(repo / 'train.py'), '-c', 'baseline', '--dataset', 'digits', '--real-ipc', '2',
            '--model', 'convnet3', '--model-kwargs', 'width=8', '--epochs', '300', '--eval-every', '0',
            '--set', 'checkpoint_every=1', '--output', str(out), '--no-plots', '--cpu']
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS='1', TIMM_DD_CACHE=str(tmp_path / 'cache'))
    # a suite started as a background job (`make test &`) ignores SIGINT, and children inherit that: give the
    # command the default disposition a user's terminal gives it, so that Python turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = out / 'runs' / 'convnet3' / 'seed0' / 'checkpoint.pt'
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert 'Traceback' not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: interrupted') and 'with --resume' in last, last
    assert checkpoint.exists()
    done = subprocess.run([*argv, '--resume'], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / 'results.json').read_text())['runs'], 'no finished run recorded'
    assert not changed_user_files(out)


@pytest.mark.parametrize('argv,answer', [
    (['--sched', 'cosine'], r'--sched is a timm flag .*--set lr_schedule='),
    (['--workers', '4'], r'--workers .*no loader workers.*--parallel runs'),
    (['--num-classes', '10'], r'--num-classes .*comes from the data'),
])
def test_timm_flags_get_the_timm_dd_spelling(argv, answer, capsys, tmp_path):
    """Issue "first hour": flags a timm user types are answered with what to write here, in one line, exit 2."""
    import re
    rc = train_cli.main(['-c', 'baseline', '--model', 'convnet3', '--output', str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(answer, err) and 'Traceback' not in err, err


def test_timm_flags_with_the_same_meaning_and_old_flags_with_values_are_read():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        argv = apply_deprecations(['--data-dir', 'd', '--amp', '--drop-path', '0.1', '--model', 'm'], timm_flags=True)
        assert argv == ['--data-root', 'd', '--mixed-precision=fp16', '--keep-rate-schedule', '--model', 'm']
        assert apply_deprecations(['--drop-path=0'], timm_flags=True) == ['--no-keep-rate-schedule']
    assert any('--drop-path 0.1 is deprecated' in str(w.message) for w in caught)
    with pytest.raises(ValueError, match='--drop-path abc: expected a number'):
        apply_deprecations(['--drop-path=abc'])


def test_warnings_print_as_one_line(monkeypatch):
    from timm_dd.cli.common import run_command
    monkeypatch.setattr(warnings, 'formatwarning', warnings.formatwarning)  # restored after the test
    assert run_command(lambda: 0) == 0
    text = warnings.formatwarning('something to know', UserWarning, '/x/timm_dd/cli/train.py', 9, 'warn(...)')
    assert text == 'UserWarning: something to know\n'  # no file name, no source line under it


def test_distill_checks_the_experts_before_loading_data(tmp_path, capsys):
    """Issue "first hour": an empty experts folder is said at once, not after a minute of loading CIFAR-10 (here the
    data does not even exist: the experts are named first)."""
    (tmp_path / 'buf').mkdir()
    rc = distill_cli.main(['distill', '-c', 'cifar10-ipc10-mtt', '--dataset', str(tmp_path / 'no-such-data'),
                           '--experts', str(tmp_path / 'buf'), '--output', str(tmp_path / 'o'), '--cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and 'no expert_*.safetensors files' in err and 'no-such-data' not in err, err


def test_a_killed_experiment_leaves_the_table_of_its_finished_runs(tmp_path, capsys, monkeypatch):
    """Issue "first hour": results.md/json are written after every finished run, marked partial."""
    import json

    from timm_dd.train import experiment
    real = experiment._Experiment.student

    def student(self, name, seed, teacher):
        if seed == 1:
            raise KeyboardInterrupt  # killed during the second run
        return real(self, name, seed, teacher)
    monkeypatch.setattr(experiment._Experiment, 'student', student)
    out = tmp_path / 'o'
    rc = train_cli.main(['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                         '--model-kwargs', 'width=4', '--epochs', '1', '--seeds', '0', '1', '--output', str(out),
                         '--no-plots', '--cpu'])
    assert rc == 130, capsys.readouterr().err
    results = json.loads((out / 'results.json').read_text())
    assert len(results['runs']) == 1 and any(n.startswith('PARTIAL: 1 of 2 runs') for n in results['notes'])
    assert 'PARTIAL' in (out / 'results.md').read_text()


def test_periodic_evaluations_on_a_class_balanced_subset_final_on_the_whole_test_set(tmp_path, capsys):
    import json
    out = tmp_path / 'o'
    assert train_cli.main(['-c', 'baseline', '--dataset', 'digits', '--real-ipc', '1', '--model', 'convnet3',
                           '--model-kwargs', 'width=4', '--epochs', '3', '--set', 'eval_every=1', '--set',
                           'eval_subset_per_class=2', '--output', str(out), '--no-plots', '--cpu']) == 0, \
        capsys.readouterr().err
    results = json.loads((out / 'results.json').read_text())
    metrics = (out / 'runs' / 'convnet3' / 'seed0' / 'metrics.jsonl').read_text().splitlines()
    counts = [json.loads(line)['test_count'] for line in metrics]
    assert counts[:2] == [20, 20] and counts[-1] == results['runs'][0]['test_count'] > 20, counts
    assert any('class-balanced subset of the test set, 2 images per class' in n for n in results['notes'])
