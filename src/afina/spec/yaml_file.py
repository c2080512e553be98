"""A spec file read into a plain mapping: PyYAML's safe loader made stricter, and every way a file can fail to be
a spec (missing, too big, not UTF-8, not YAML, not a mapping) said in one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from afina import UserError

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; anything bigger is a mistake (or an attack)
MAX_NODES = 100_000  # YAML nodes after expanding aliases: a few anchors are fine, an alias bomb is not
MAX_DEPTH = 64  # nested lists and mappings: a spec needs about 6; PyYAML composes by recursion and would overflow


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key twice in one mapping is an error (PyYAML keeps the last one
    silently), and aliases may not expand the document past MAX_NODES nodes (billion laughs) or into
    itself, nor nest deeper than MAX_DEPTH (a recursion bomb). PyYAML follows YAML 1.1, which reads 1e-4 as a
    string; accept it as the float people mean."""

    _depth = 0

    def compose_node(self, parent, index):
        # PyYAML composes nested collections by recursion: stop at MAX_DEPTH, long before Python's stack does
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"values nested more than {MAX_DEPTH} deep (a recursion bomb?); flatten the value", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, Any], Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key_node.value!r} (first on line {seen[key].line + 1}); keep one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, sizes: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """(nodes, depth) of the document with every alias expanded (memoised, so a bomb is measured, not
    expanded): aliases can nest a value deeper than its text does."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it; remove the recursion", node.start_mark)
    open_.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    measured = [_expanded_size(c, sizes, open_) for c in children]
    size, depth = 1 + sum(m[0] for m in measured), 1 + max((m[1] for m in measured), default=0)
    open_.discard(id(node))
    if size > MAX_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand this document past {MAX_NODES} values (an alias bomb?); write the values out", node.start_mark
        )
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(
            None, None, f"aliases nest values more than {MAX_DEPTH} deep (a recursion bomb?); write the values out", node.start_mark
        )
    sizes[id(node)] = (size, depth)
    return size, depth


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d+)[eE][-+]?\d+$|^[-+]?\d[\d_]*\.[\d_]*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def read(path: Path) -> dict[str, Any]:
    """The spec file's YAML mapping; UserError with one line naming the fix if it is not one."""
    if not path.is_file():
        what = "is a folder, not a spec file" if path.is_dir() else "no such spec file"
        raise UserError(f"{path}: {what}; pass the path of a YAML spec, e.g. experiments/quickstart.yaml")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise UserError(f"{path}: a spec of {path.stat().st_size} bytes is too big (at most {MAX_SPEC_BYTES}); is it the right file?")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: is not UTF-8 text (bad byte at offset {e.start}); save the spec as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check the file and its permissions") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join((getattr(e, "problem", None) or str(e)).split())
        if "single document" in f"{getattr(e, 'context', '')} {problem}":
            problem = "it holds several YAML documents (---); keep one spec per file"
        fix = "" if ";" in problem else "; fix the syntax"
        raise UserError(f"{path}:{where} is not valid YAML ({problem}){fix}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a spec is a YAML mapping with name, data and search sections")
    return raw
