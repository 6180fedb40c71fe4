"""benchmarks/reproduce.py: a published table with our numbers beside it (smoke mode: a tiny set, one epoch)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    else:
        assert rows[0]['net'] == 'convnet3' and rows[0]['published'] == '64.3 ± 0.7'
    assert all('±' in r['ours'] for r in rows)
    assert '| Baseline |' in (tmp_path / 'out' / 'reproduce.md').read_text() or table != 'dpkd'
