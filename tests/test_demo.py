"""The demo (`make demo`, `timm-dd-demo`): every step runs as its own command and the summary holds the core claim and
the four training steps' table. Tiny settings: 2-epoch schedules, 4 ATT iterations evaluated for 2 epochs."""
import json

import pytest

from timm_dd.cli import demo


def test_train_flags_scale_every_phase_of_the_schedules():
    flags = dict(zip(demo.train_flags(40)[::2], demo.train_flags(40)[1::2]))
    assert (flags['--epochs'], flags['--teacher-epochs'], flags['--final-epochs'], flags['--period']) == \
        ('40', '40', '10', '5')  # what `make demo` always ran
    short = demo.train_flags(2)
    assert short[short.index('--period') + 1] == '1' and short[short.index('--final-epochs') + 1] == '1'


def test_demo_runs_every_step_and_writes_one_summary(tmp_path, capsys):
    out = tmp_path / 'demo'
    rc = demo.main(['--output', str(out), '--epochs', '2', '--distill-set', 'iterations=4', 'eval_every=4',
                    'eval_epochs=2', 'eval_seeds=2'])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    summary = (out / 'summary.md').read_text()
    assert summary in printed
    claim = [line for line in summary.splitlines() if demo.CORE_CLAIM in line]
    assert len(claim) == 1 and 'iteration 4' in claim[0] and '2 seeds)' in claim[0]
    assert 'paired by seed, distilled - real' in claim[0] and 'of 2 seeds' in claim[0]
    gaps = [line for line in summary.splitlines() if line.startswith('- On ')]
    assert len(gaps) == 2 and all('DP+KD moves ResNet18' in line for line in gaps)
    rows = [line for line in summary.splitlines() if line.startswith('| ') and 'recipe' not in line]
    assert len(rows) == 8  # 2 real + 2 distilled steps; baseline: 2 networks, dpkd: teacher + student
    assert sum('att distilled ipc 10' in r for r in rows) == 4 and sum('10 real/class digits' in r for r in rows) == 4
    for step in ('real-baseline', 'real-dpkd', 'att-baseline', 'att-dpkd'):
        assert json.loads((out / step / 'results.json').read_text())['runs']
    assert (out / 'att' / 'distilled').is_dir() and (out / 'comparison.png').is_file()
    assert demo.CORE_CLAIM in (out / 'att.log').read_text()


@pytest.mark.parametrize('convnet, resnet, dpkd, says', [
    (0.80, 0.60, 0.75, 'ResNet18 is 20.0 points under the ConvNet-3: the gap DP+KD is for; DP+KD moves ResNet18 +15.0'),
    (0.80, 0.90, 0.85, 'ResNet18 is 10.0 points above the ConvNet-3: no architecture gap to close here; DP+KD moves '
                       'ResNet18 -5.0'),
])
def test_the_summary_reads_the_architecture_gap_from_the_results(tmp_path, convnet, resnet, dpkd, says):
    def results(step, rows):
        (tmp_path / step).mkdir()
        (tmp_path / step / 'results.json').write_text(json.dumps({'table': [
            {'model': m, 'final_mean': v} for m, v in rows]}))
    results('real-baseline', [('convnet3', convnet), ('resnet18_dd', resnet)])
    results('real-dpkd', [('resnet18_dd', dpkd)])
    lines = demo._architecture_gap_lines(tmp_path)  # the ATT steps are missing: no line for them
    assert len(lines) == 1 and lines[0].startswith('- On 10 real images per class: ' + says)


def test_a_bad_override_fails_before_any_step(tmp_path, capsys):
    rc = demo.main(['--output', str(tmp_path / 'd'), '--distill-set', 'no_such_key=1'])
    assert rc == 2 and 'no_such_key' in capsys.readouterr().err and not (tmp_path / 'd').exists()


def test_a_failing_step_stops_the_demo_with_its_status(tmp_path, capsys, monkeypatch):
    failing = ['train', '-c', 'nosuchrecipe', '--model', 'convnet3']
    monkeypatch.setattr(demo, 'steps', lambda out, epochs, distill_set: [failing, ['train', '--help']])
    rc = demo.main(['--output', str(tmp_path / 'd'), '--epochs', '1'])
    captured = capsys.readouterr()
    assert rc == 2 and 'demo step `timm-dd-train -c nosuchrecipe' in captured.err
    assert 'timm-dd-train --help' not in captured.out and not (tmp_path / 'd' / 'summary.md').exists()
