"""The README's usage snippets (code blocks preceded by `<!-- readme-test -->`) must actually run."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / 'README.md'
SNIPPETS = re.findall(r'<!-- readme-test -->\s*```python\n(.*?)```', README.read_text(), flags=re.S)


def test_readme_has_snippets():
    assert SNIPPETS


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f'README.md snippet {index}', 'exec'), {'__name__': '__readme__'})
