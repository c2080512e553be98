"""Bad input writes nothing: every file under the folders, before and after."""

from __future__ import annotations

import contextlib
from pathlib import Path


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under the folders with its size and modification time (links and pipes are not followed)."""
    out = {}
    for folder in folders:
        for p in Path(folder).rglob("*"):
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() and not p.is_symlink() else 0, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def nothing_written(*folders: Path):
    """Bad input writes nothing: no study, no run, no mlruns/ or other folder, no changed file."""
    before = snapshot(*folders)
    yield
    after = snapshot(*folders)
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not added and not changed, f"written: {added[:5]} changed: {changed[:5]}"
