"""Following a node input back through the graph to where its value really comes from.

ComfyUI routes values through Primitive and switch nodes, reroutes and bypassed nodes, and the
sampler's own stored widget values are often stale: a value is therefore read at its source. The
resolver also records which nodes take part, so the leftovers can be reported.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from workbench.comfy.graph import BYPASSED, MUTED, Link, Node, WorkflowError
from workbench.comfy.node_types import PRIMITIVES, SWITCHES


MAX_ROUTE = 256  # routing nodes on one value's path; deeper is refused (a crafted chain, or a bug)


def _shown(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def as_int(v: Any, what: str) -> int:
    """An integer widget value; a whole float (20.0) or a numeric string ("20") is accepted, as ComfyUI does."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise WorkflowError(f"{what}: expected an integer, found {_shown(v)}")
    if isinstance(v, int):
        return v
    try:
        f = float(v)
        if math.isfinite(f) and f == int(f):
            return int(f)
    except (ValueError, OverflowError):
        pass
    raise WorkflowError(f"{what}: expected an integer, found {_shown(v)}")


def as_float(v: Any, what: str) -> float:
    """A finite number widget value (int, float or a numeric string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise WorkflowError(f"{what}: expected a number, found {_shown(v)}")
    try:
        f = float(v)
    except (ValueError, OverflowError):
        raise WorkflowError(f"{what}: expected a number, found {_shown(v)}") from None
    if not math.isfinite(f):
        raise WorkflowError(f"{what}: expected a finite number, found {_shown(v)}")
    return f


def as_str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise WorkflowError(f"{what}: expected a string, found {_shown(v)}")
    return v


def as_bool(v: Any, what: str) -> bool:
    if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise WorkflowError(f"{what}: expected true or false, found {_shown(v)}")


class _Literal:
    """A value read at its source (None is a value too, unlike "no source found")."""

    def __init__(self, value: Any):
        self.value = value


class Resolver:
    """Follows links to sources over one flat graph; records the nodes used and those it could not map."""

    def __init__(self, nodes: dict[str, Node], report: list[str]):
        self.nodes, self.report = nodes, report  # report: shared with the Imported result
        self.used: set[str] = set()  # nodes that take part in making the sampled image
        self.unmapped: dict[str, str] = {}  # node id -> why
        self._path: list[str] = []  # routing nodes of the follow() calls in progress (cycle check)

    def note(self, text: str) -> None:
        if text not in self.report:
            self.report.append(text)

    def unmapped_node(self, node: Node, why: str) -> None:
        self.used.add(node.id)
        self.unmapped.setdefault(node.id, why)

    def follow(self, ref: Any, what: str) -> Any:
        """Where ``ref`` really comes from: a literal (``_Literal``), a producing (Node, slot), or None.

        Switch and Primitive values are read by nested calls; ``_path`` holds the routing nodes of every
        call in progress, so a node met again (a link cycle) is refused instead of looping or recursing.
        """
        depth = len(self._path)
        try:
            while isinstance(ref, Link):
                node = self.nodes.get(ref.node)
                if node is None:
                    raise WorkflowError(f"{what}: link to node {ref.node}, which does not exist")
                if node.id in self._path:
                    cycle = self._path[self._path.index(node.id):]
                    raise WorkflowError(f"{what}: the links form a cycle through "
                                        f"{' -> '.join(self.nodes[n].label() for n in cycle)} -> {node.label()}")
                if len(self._path) >= MAX_ROUTE:
                    raise WorkflowError(f"{what}: more than {MAX_ROUTE} switch / reroute / bypassed nodes in a row "
                                        f"(MAX_ROUTE), at {node.label()}")
                self._path.append(node.id)
                self.used.add(node.id)
                if node.mode == MUTED:
                    self.note(f"{what} comes from muted node {node.label()}: ComfyUI would not run this workflow")
                    return None
                if node.mode == BYPASSED:
                    ref = self._bypass(node, ref.slot)
                    continue
                if node.type in PRIMITIVES:
                    return _Literal(self.value(node.inputs.get("value"), what))
                if node.type in SWITCHES:
                    v = self.value(node.inputs.get("switch"), f"{node.label()} switch")  # not nested in `what`
                    on = False if v is None else as_bool(v, f"{node.label()} switch")
                    ref = node.inputs.get("on_true" if on else "on_false")
                    if ref is None:
                        self.note(f"{what}: switch {node.label()} is {on} but its on_{str(on).lower()} input is empty")
                        return None
                    continue
                if node.type == "Reroute":
                    ref = node.first_link()
                    continue
                return node, ref.slot
            return None if ref is None else _Literal(ref)
        finally:
            del self._path[depth:]

    def _bypass(self, node: Node, slot: int) -> Optional[Link]:
        """A bypassed node passes through its first linked input of the output's type (the same slot first)."""
        want = node.output_types[slot] if slot < len(node.output_types) else ""
        links = [(name, v) for name, v in node.inputs.items() if isinstance(v, Link)]
        typed = [(n, v) for n, v in links if not want or not node.input_types.get(n) or node.input_types[n] == want]
        pick = typed[slot] if slot < len(typed) else (typed[0] if typed else None)
        self.note(f"bypassed node {node.label()}: its input passes through")
        return pick[1] if pick else None

    def value(self, ref: Any, what: str) -> Any:
        got = self.follow(ref, what)
        if isinstance(got, _Literal):
            return got.value
        if got is not None:
            node, _ = got
            self.unmapped_node(node, f"produces {what}; only widget / Primitive values can be read")
        return None

    def producer(self, ref: Any, what: str) -> Optional[Node]:
        got = self.follow(ref, what)
        if isinstance(got, tuple):
            return got[0]
        if got is not None:
            self.note(f"{what}: expected a node output, found the literal {got.value!r}")
        return None
