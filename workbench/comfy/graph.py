"""The workflow as one flat graph: ``Node``s joined by ``Link``s, and the cycle check over them.

``workbench.comfy.reader`` makes this graph from a file (UI or API JSON, or a PNG's text chunks), with
subgraph instances flattened by ``workbench.comfy.flatten`` (inner ids like ``"76:3"``, as ComfyUI's API
format writes them; an instance's muted / bypassed mode inherited by the nodes inside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from workbench.errors import InputError

MUTED, BYPASSED = 2, 4
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


class WorkflowError(InputError):
    """The file is not a workflow we can read, or it lacks what an experiment needs."""


@dataclass(frozen=True)
class Link:
    node: str  # flat node id ("3", or "76:3" inside subgraph instance 76, as ComfyUI's API format)
    slot: int


@dataclass
class Node:
    id: str
    type: str
    mode: int = 0
    title: Optional[str] = None
    inputs: dict[str, Any] = field(default_factory=dict)  # name -> Link | literal widget value
    input_types: dict[str, str] = field(default_factory=dict)
    output_types: list[str] = field(default_factory=list)

    def first_link(self) -> Optional[Link]:
        """The first linked input: what a pass-through node (Reroute, image / conditioning op) carries on."""
        return next((v for v in self.inputs.values() if isinstance(v, Link)), None)

    def label(self) -> str:
        title = f" '{self.title}'" if self.title and self.title != self.type else ""
        return f"#{self.id} {self.type}{title}"


def find_cycle(nodes: dict[str, Node], starts: list[str]) -> Optional[list[tuple[str, str]]]:
    """A cycle among the links feeding ``starts``, as [(node id, input name), ...], or None.

    ComfyUI refuses to run a workflow whose nodes depend on themselves; the importer checks this once,
    up front, so that following links back from the sampler always ends (iterative: no recursion limit).
    Muted nodes are not followed (ComfyUI does not run them).
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in starts:
        if start in state:
            continue
        path: list[tuple[str, str]] = []  # (node id, input name followed from it)
        stack = [(start, iter(_linked_inputs(nodes.get(start))))]
        state[start] = 1
        while stack:
            nid, it = stack[-1]
            step = next(it, None)
            if step is None:
                state[nid] = 2
                stack.pop()
                if path:
                    path.pop()
                continue
            name, target = step
            if state.get(target) == 1:  # back to a node on the path: the cycle runs from there
                ids = [s[0] for s in stack]
                cut = ids.index(target)
                return [(ids[i], path[i][1] if i < len(path) else name) for i in range(cut, len(ids))]
            if target not in state:
                state[target] = 1
                path.append((nid, name))
                stack.append((target, iter(_linked_inputs(nodes.get(target)))))
    return None


def _linked_inputs(node: Optional[Node]) -> list[tuple[str, str]]:
    if node is None or node.mode == MUTED:
        return []
    return [(name, v.node) for name, v in node.inputs.items() if isinstance(v, Link)]


def describe_cycle(nodes: dict[str, Node], cycle: list[tuple[str, str]], limit: int = 8) -> str:
    """'#5 A takes 'model' from #6 B, which takes 'model' from #5 A' (one line; long cycles shortened)."""
    label = lambda nid: nodes[nid].label() if nid in nodes else f"#{nid}"  # noqa: E731
    ids = [nid for nid, _ in cycle] + [cycle[0][0]]
    steps = [f"takes '{name}' from {label(ids[i + 1])}" for i, (_, name) in enumerate(cycle)]
    if len(steps) > limit:
        steps = steps[: limit - 1] + [f"... ({len(steps) - limit} more) ...", steps[-1]]
    return f"{label(ids[0])} " + ", which ".join(steps)
