"""The package's shape, checked: imports go down the layers of ARCHITECTURE.md, only ``timm_dd/io.py`` writes
files (everything else goes through its helpers), and random generators are made only in ``timm_dd/seeding.py``."""
import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'timm_dd'


def _floors() -> Dict[str, int]:
    """``{top-level module or package: floor}`` from ARCHITECTURE.md's layer table."""
    floors = {}
    for line in (ROOT / 'ARCHITECTURE.md').read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for name in re.findall(r'`([^`]+)`', cells[1]):
            floors[name.rstrip('/').removesuffix('.py')] = int(cells[0])
    return floors


def _modules() -> Iterator[Tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(ROOT).with_suffix('')
        yield path, '.'.join(rel.parts)


def _imports(path: Path, module: str) -> Iterator[Tuple[int, str]]:
    """``(line, imported timm_dd module)`` for every import in ``path``, function-level ones included."""
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    package = package.removesuffix('.__init__')
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f'{target}.{a.name}' for a in node.names]
            else:
                names = [node.module or '']
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == 'timm_dd' or name.startswith('timm_dd.'):
                yield node.lineno, name


def _top(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_every_module_has_a_floor():
    floors = _floors()
    assert floors, 'ARCHITECTURE.md has no layer table'
    tops = {_top(m) for _, m in _modules()} - {'__init__', 'version'}
    missing = sorted(tops - set(floors))
    assert not missing, f'ARCHITECTURE.md does not place {missing} on a floor'


def test_imports_go_down_the_layers():
    floors, bad = _floors(), []
    for path, module in _modules():
        own = _top(module)
        if own in ('__init__', 'version'):  # the package facade imports what it re-exports
            continue
        for line, target in _imports(path, module):
            other = _top(target)
            if other in ('', 'version') or other == own:
                continue
            if floors.get(other, 99) > floors[own]:
                bad.append(f'{path.relative_to(ROOT)}:{line} ({own}, floor {floors[own]}) imports {target} '
                           f'(floor {floors.get(other)})')
    assert not bad, 'imports from a higher layer:\n' + '\n'.join(bad)


def _private_imports(path: Path, module: str) -> Iterator[Tuple[int, str]]:
    """``(line, what)`` for every import of a private module or name (``_x``) from another top-level package."""
    own = _top(module)
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    package = package.removesuffix('.__init__')
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split('.')[:len(package.split('.')) - node.level + 1]
            target = '.'.join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ''
        if not target.startswith('timm_dd.') or _top(target) in (own, ''):
            continue
        private = [part for part in target.split('.')[2:] if part.startswith('_') and part != '__init__']
        private += [a.name for a in node.names if a.name.startswith('_') and not a.name.startswith('__')]
        if private:
            yield node.lineno, f'{target}: {private}'


def test_no_private_imports_across_packages():
    bad = [f'{path.relative_to(ROOT)}:{line} imports {what}' for path, module in _modules()
           for line, what in _private_imports(path, module)]
    assert not bad, 'private modules or names imported from another package:\n' + '\n'.join(bad)


def test_the_private_import_check_catches_one(tmp_path):
    path = tmp_path / 'teacher.py'
    path.write_text('from ..models._common import describe_input\nfrom ..models import create_network\n'
                    'from ._errors import HubError\n')
    assert [w for _, w in _private_imports(path, 'timm_dd.hub.teacher')] == ["timm_dd.models._common: ['_common']"]


_WRITE_MODES = re.compile(r'[wax+]')
_SAVERS = {'save_file', 'savefig', 'write_text', 'write_bytes', 'to_parquet', 'dump'}
#: calls that change a folder's contents (io.make_folder, io.remove_file and the atomic helpers do it)
_FOLDER_CHANGES = {'mkdir', 'makedirs', 'unlink', 'remove', 'rmtree', 'rename', 'replace', 'rmdir'}
_MODULE_SAVERS = {'torch', 'np', 'numpy'}  # torch.save / np.save (a set's own .save goes through the helpers)


def _writes(tree: ast.AST) -> List[Tuple[int, str]]:
    """Calls that write a file, except into a file object or path handed out by the io helpers
    (``with atomic_write(...) as f`` / ``atomic_write_with(path, lambda tmp: ...)`` / ``with atomic_folder(...) as d``)."""
    safe_names, out = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, 'id', getattr(call.func, 'attr', '')) in (
                        'atomic_write', 'atomic_folder') and isinstance(item.optional_vars, ast.Name):
                    safe_names.add(item.optional_vars.id)
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'atomic_write_with':
            for arg in node.args[1:]:
                if isinstance(arg, ast.Lambda):
                    safe_names.update(a.arg for a in arg.args.args)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, 'id', getattr(node.func, 'attr', ''))
        args = list(node.args) + [k.value for k in node.keywords]
        uses_safe = any(isinstance(a, ast.Name) and a.id in safe_names for a in ast.walk(node) if a is not node)
        if name == 'open':
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == 'mode'),
                                                                None)
            if isinstance(mode, ast.Constant) and _WRITE_MODES.search(str(mode.value)) and not uses_safe:
                out.append((node.lineno, 'open(..., write mode)'))
        elif name in _FOLDER_CHANGES and _changes_files(node):
            out.append((node.lineno, f'{name}(...)'))
        elif (name in _SAVERS or name == 'save' and getattr(node.func, 'value', None) is not None
              and getattr(node.func.value, 'id', '') in _MODULE_SAVERS) and not uses_safe and args:
            if name == 'dump' and len(node.args) < 2:
                continue
            out.append((node.lineno, f'{name}(...)'))
    return out


def _changes_files(call: ast.Call) -> bool:
    """``x.mkdir()``, ``os.remove(p)``, ``shutil.rmtree(p)``, ``p.rename(q)``, ...; not ``str.replace(a, b)`` (two
    string arguments on something that is not ``os``) nor ``dict.remove`` / ``list.remove`` on one argument."""
    name = getattr(call.func, 'attr', getattr(call.func, 'id', ''))
    owner = getattr(getattr(call.func, 'value', None), 'id', '')
    if name in ('replace', 'remove', 'rename'):
        return owner in ('os', 'shutil') or (name == 'rename' and len(call.args) == 1)
    return True


def test_only_the_io_helpers_write_files():
    bad = []
    for path, module in _modules():
        if path == PACKAGE / 'io.py':
            continue
        for line, what in _writes(ast.parse(path.read_text())):
            bad.append(f'{path.relative_to(ROOT)}:{line}: {what}')
    assert not bad, 'files written outside timm_dd/io.py helpers:\n' + '\n'.join(bad)


def test_the_writer_check_catches_a_plain_write():
    tree = ast.parse("with open(p, 'w') as f:\n    f.write('x')\nPath(p).write_text('x')\ntorch.save(x, p)\n")
    assert sorted(w for _, w in _writes(tree)) == ['open(..., write mode)', 'save(...)', 'write_text(...)']
    folders = ast.parse("out.mkdir(parents=True)\npath.unlink()\nos.remove(p)\nshutil.rmtree(d)\n"
                        "name.replace('a', 'b')\nitems.remove(x)\n")
    assert sorted(w for _, w in _writes(folders)) == ['mkdir(...)', 'remove(...)', 'rmtree(...)', 'unlink(...)']
    ok = ast.parse("with atomic_write(p) as f:\n    torch.save(x, f)\natomic_write_with(p, lambda tmp: save_file(t, tmp))\n")
    assert _writes(ok) == []


@pytest.mark.parametrize('source, expected', [
    ('from ..train import trainer', 'timm_dd.train'),
    ('from ..hub import load_teacher', 'timm_dd.hub'),
])
def test_the_layer_check_resolves_relative_imports(tmp_path, source, expected):
    path = tmp_path / 'mod.py'
    path.write_text(source)
    assert [t for _, t in _imports(path, 'timm_dd.data.mod')][0].startswith(expected)


_RANDOMNESS = re.compile(r'torch\.Generator\(|\bmanual_seed\(|np\.random\.|^\s*import random\b|\brandom\.(seed|random|'
                         r'randint|choice|shuffle|sample)\(', re.M)


def _random_sources(text: str) -> List[str]:
    """Generators made or seeded by hand: what only ``seeding.py`` may do (``.manual_seed(derive_seed(...))`` on a
    generator ``seeding`` made is a reseed, not a new source)."""
    return [m.group(0) for m in _RANDOMNESS.finditer(text)
            if not (m.group(0) == 'manual_seed(' and text[m.end():].startswith('derive_seed('))]


def test_randomness_only_through_seeding():
    bad = []
    for path, _ in _modules():
        if path == PACKAGE / 'seeding.py':
            continue
        text = path.read_text()
        bad += [f'{path.relative_to(ROOT)}: {what}' for what in _random_sources(text)]
    assert not bad, 'random generators made outside timm_dd/seeding.py:\n' + '\n'.join(bad)
    assert _random_sources('g = torch.Generator().manual_seed(3)\nx = np.random.rand(2)\nimport random\n') == [
        'torch.Generator(', 'manual_seed(', 'np.random.', 'import random']


#: the only modules imported inside functions, and why each must wait until it is needed
LAZY_IMPORTS = {
    'matplotlib': 'an optional extra (plots): the package imports without it',
    'fcntl': 'POSIX only: where it is missing (Windows) the folder lock is a no-op',
    'torch._inductor': "loads the compiler stack; only the compiled step's probe needs it",
    'huggingface_hub': 'get_token, which older clients lack (guarded by try)',
}


def _function_imports(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    """``(line, module)`` of every import inside a function body (relative ones keep their dots)."""
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    yield node.lineno, '.' * node.level + (node.module or '')
                elif isinstance(node, ast.Import):
                    yield from ((node.lineno, a.name) for a in node.names)


def _lazy_allowed(module: str) -> bool:
    return any(module == m or module.startswith(m + '.') for m in LAZY_IMPORTS)


def test_imports_are_at_the_top_unless_they_must_wait():
    bad = [f'{path.relative_to(ROOT)}:{line}: {module}' for path, _ in _modules()
           for line, module in _function_imports(ast.parse(path.read_text())) if not _lazy_allowed(module)]
    assert not bad, ('imports inside functions (move them to the top of the module, or add the module to '
                     'LAZY_IMPORTS with the reason it must wait):\n' + '\n'.join(bad))


def test_the_function_import_check_catches_one():
    tree = ast.parse('import os\n\ndef f():\n    from ..hub import load_teacher\n    import matplotlib.pyplot as plt\n')
    found = list(_function_imports(tree))
    assert found == [(4, '..hub'), (5, 'matplotlib.pyplot')]
    assert [m for _, m in found if not _lazy_allowed(m)] == ['..hub']
