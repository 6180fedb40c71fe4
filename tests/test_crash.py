"""Crash consistency: runs of every kind killed with SIGKILL at seeded moments (inside training, inside an atomic
file write, between its steps) and resumed equal the uninterrupted run, and leave no temporary file behind.
The harness is ``tests/scripts/crash_harness.py``; ``--kills 50 --seed N`` is its long randomized version."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='the harness forks')
def test_kill_anywhere_then_resume_gives_the_same_result(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', TIMM_DD_CACHE=str(tmp_path / 'cache'))
    out = tmp_path / 'crash.json'
    proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'scripts' / 'crash_harness.py'), '--output', str(out),
                           '--kills', '5', '--seed', '0', '--work', str(tmp_path / 'runs')],
                          env=env, capture_output=True, text=True, timeout=900)
    result = json.loads(out.read_text())
    kinds = {r['kind']: r for r in result['results']}
    assert set(kinds) == {'train', 'experts', 'mtt', 'att', 'dm'}
    for kind, r in kinds.items():
        assert 'error' not in r, (kind, r.get('error'), proc.stderr[-2000:])
        assert len(r['cases']) >= 5
        # every case was really killed, resumed and compared; moments inside and between the steps of file writes
        assert {c['point'] for c in r['cases']} >= {'step', 'write', 'replace'} - {p for p, n in r['counts'].items()
                                                                                   if n == 0}
        bad = [c for c in r['cases'] if not c['ok']]
        assert not bad, (kind, bad)
    assert proc.returncode == 0
