"""A user's files with every name an earlier version (or a careless pattern) took for its own temporaries, put
into output folders by the tests of issue "Reliability II": a run may never remove, rename or change them."""
from pathlib import Path
from typing import List

USER_FILES = ['.notes.tmpl', '.x.tmp', 'sub/.env.tmp', 'sub/deeper/.a.b.tmp-1', '.backup.old-2023/data.txt',
              '.data.tmp-9/file', '.lock', 'notes.txt']


def write_user_files(folder: Path) -> None:
    for i, name in enumerate(USER_FILES):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f'user file {i}'.encode())


def changed_user_files(folder: Path) -> List[str]:
    """The user files that are missing or no longer hold what :func:`write_user_files` wrote."""
    return [name for i, name in enumerate(USER_FILES)
            if not (folder / name).is_file() or (folder / name).read_bytes() != f'user file {i}'.encode()]
