"""Print pip constraints that pin every runtime dependency of pyproject.toml at its lower bound.

`make lowest` installs afina with them and runs the tests that exercise each library, so the bounds
in pyproject.toml are versions the suite has passed with, not the newest releases.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(dependencies: list[str]) -> list[str]:
    out = []
    for dep in dependencies:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)", dep)
        if not m:
            sys.exit(f"bench/lowest.py: {dep!r} has no lower bound (>=); give it one in pyproject.toml")
        out.append(f"{m.group(1)}=={m.group(3)}")
    return out


if __name__ == "__main__":
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    print("\n".join(pins(project["dependencies"])))
