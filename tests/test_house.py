"""The floor plan: src/afina holds only rooms (packages), each small, and no room reaches up the layers, not even
for a type annotation (import-linter checks runtime imports; this adds those under TYPE_CHECKING)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "afina"


def rooms_top_down() -> list[set[str]]:
    """The layers contract of pyproject.toml, as sets of room names from the top (cli) down (spec)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [{name.strip().removeprefix("afina.") for name in layer.split("|")} for layer in layers]


def test_the_package_holds_only_rooms_and_every_room_is_in_the_layers():
    loose = sorted(p.name for p in SRC.iterdir() if p.is_file() and p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a room: {loose}"
    rooms = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set().union(*rooms_top_down()), "every room has its place in pyproject's layers contract"


def test_rooms_and_files_stay_small():
    for room in (p for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        modules = list(room.glob("*.py"))
        assert len(modules) <= 14, f"{room.name}/ has {len(modules)} modules: split the room"
        for module in modules:
            lines = len(module.read_text(encoding="utf-8").splitlines())
            assert lines <= 310, f"{room.name}/{module.name} has {lines} lines: one job per file"


def test_no_room_imports_a_room_above_it_even_for_annotations():
    import grimp

    rank = {room: i for i, layer in enumerate(rooms_top_down()) for room in layer}
    graph = grimp.build_graph("afina", exclude_type_checking_imports=False)
    upward = []
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = module.split(".")[1:2], imported.split(".")[1:2]
            if a and b and a != b and a[0] in rank and b[0] in rank and rank[b[0]] <= rank[a[0]]:
                upward.append(f"{module} -> {imported}")
    assert not upward, upward
