"""Both workflow formats -> the same ``{flat id: Node}`` dict.

API format is flat already; UI format nests subgraphs, whose instances are expanded (inner ids like
``"76:3"``), whose links are followed across the instance boundary, and whose mode (muted / bypassed)
the inner nodes inherit. Every JSON value read is type-checked, naming where it is (``_expect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from workbench.comfy.graph import SUBGRAPH_IN, SUBGRAPH_OUT, Link, Node, WorkflowError
from workbench.comfy.node_types import WIDGETS

# Limits on the graph, checked while it is walked (real ComfyUI workflows have a few hundred nodes).
MAX_NODES = 10_000  # nodes after flattening subgraphs
MAX_SUBGRAPH_DEPTH = 16  # subgraphs inside subgraphs


def _expect(ok: bool, where: str, what: str, found: Any) -> None:
    """Refuse a value of the wrong JSON type, naming where it is, what was expected and what was found."""
    if not ok:
        shown = repr(found)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise WorkflowError(f"{where}: expected {what}, found {type(found).__name__} {shown}")


def _is_id(v: Any) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def flatten_api(prompt: dict) -> dict[str, Node]:
    if len(prompt) > MAX_NODES:
        raise WorkflowError(f"{len(prompt)} nodes, over the limit of {MAX_NODES} (MAX_NODES)")
    nodes = {}
    for nid, n in prompt.items():
        where = f"node {nid!r}"
        _expect(isinstance(n["class_type"], str), f"{where} class_type", "a node type name (string)", n["class_type"])
        raw_inputs = n.get("inputs") or {}
        _expect(isinstance(raw_inputs, dict), f"{where} ({n['class_type']}) inputs", "an object {name: value}",
                raw_inputs)
        meta = n.get("_meta") or {}
        _expect(isinstance(meta, dict), f"{where} _meta", "an object", meta)
        inputs = {}
        for name, v in raw_inputs.items():
            is_link = isinstance(v, list) and len(v) == 2 and _is_id(v[0]) and isinstance(v[1], int) \
                and not isinstance(v[1], bool)
            inputs[name] = Link(str(v[0]), v[1]) if is_link else v
        title = meta.get("title")
        nodes[str(nid)] = Node(str(nid), n["class_type"], 0, title if isinstance(title, str) else None, inputs)
    return nodes


def _links(graph: dict, where: str) -> dict[int, tuple]:
    """Link id -> (origin id, origin slot, target id, target slot); top level stores arrays, subgraphs objects."""
    links = graph.get("links") or []
    _expect(isinstance(links, list), f"{where} links", "a list", links)
    out = {}
    for link in links:
        if isinstance(link, dict):
            keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
            _expect(all(_is_id(link.get(k)) for k in keys), f"{where} link {link.get('id')!r}",
                    f"an object with {', '.join(keys)}", link)
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            _expect(isinstance(link, list) and len(link) >= 5 and all(_is_id(x) for x in link[:5]),
                    f"{where} link", "[id, origin id, origin slot, target id, target slot, type]", link)
            out[link[0]] = (link[1], link[2], link[3], link[4])
    return out


def _nodes(graph: dict, where: str) -> dict[int, dict]:
    """A graph level's nodes by id, each checked for the fields the importer reads."""
    nodes = graph.get("nodes") or []
    _expect(isinstance(nodes, list), f"{where} nodes", "a list", nodes)
    out = {}
    for n in nodes:
        _expect(isinstance(n, dict) and _is_id(n.get("id")) and isinstance(n.get("type"), str),
                f"{where} node", "an object with an 'id' and a 'type' (string)", n)
        at = f"{where} node #{n['id']} {n['type']}"
        _expect(isinstance(n.get("mode", 0), int), f"{at} mode", "an integer", n.get("mode"))
        _expect(isinstance(n.get("widgets_values") or [], (list, dict)), f"{at} widgets_values",
                "a list (or an object)", n.get("widgets_values"))
        for key in ("inputs", "outputs"):
            slots = n.get(key) or []
            _expect(isinstance(slots, list) and all(isinstance(x, dict) for x in slots), f"{at} {key}",
                    "a list of objects", slots)
        for inp in n.get("inputs") or []:
            _expect(isinstance(inp.get("name"), str) and (inp.get("link") is None or _is_id(inp["link"])),
                    f"{at} input", "an object with a 'name' and a 'link' id or null", inp)
        out[n["id"]] = n
    return out


@dataclass
class _Scope:
    """One graph level: the top level, or the inside of one subgraph instance."""

    prefix: str
    nodes: dict[int, dict]
    links: dict[int, tuple]
    parent: Optional["_Scope"] = None
    instance: Optional[dict] = None  # the subgraph node in the parent scope
    definition: Optional[dict] = None
    mode: int = 0  # the instance's mode, inherited by its inner nodes


def flatten_ui(wf: dict) -> dict[str, Node]:
    """UI graph -> flat nodes with links resolved across subgraph boundaries (ids like "76:3")."""
    definitions = wf.get("definitions") or {}
    _expect(isinstance(definitions, dict), "definitions", "an object", definitions)
    subgraphs = definitions.get("subgraphs") or []
    _expect(isinstance(subgraphs, list) and all(isinstance(sg, dict) and isinstance(sg.get("id"), str)
                                                for sg in subgraphs),
            "definitions.subgraphs", "a list of objects with an 'id'", subgraphs)
    flat = _UiFlattener({sg["id"]: sg for sg in subgraphs})
    flat.walk(_Scope("", _nodes(wf, "workflow"), _links(wf, "workflow")))
    return flat.out


class _UiFlattener:
    """Walks a UI graph and its subgraph instances into ``out``; each subgraph definition is checked once."""

    def __init__(self, definitions: dict[str, dict]):
        self.defs = definitions
        self.parsed: dict[str, tuple[dict, dict]] = {}  # subgraph id -> (nodes, links)
        self.out: dict[str, Node] = {}
        self.visited = 0  # nodes met, subgraph instances included (empty instances nested deep are work too)

    def walk(self, scope: _Scope) -> None:
        for n in scope.nodes.values():
            self.visited += 1
            if self.visited > MAX_NODES:
                raise WorkflowError(f"more than {MAX_NODES} nodes once subgraphs are expanded (MAX_NODES): "
                                    "not a workflow this importer reads")
            if n["type"] in self.defs:
                self.walk(self.child(scope, n))
            else:
                node = self.flat_node(scope, n)
                self.out[node.id] = node

    def flat_node(self, scope: _Scope, n: dict) -> Node:
        """One node with its widget values named (``node_types.WIDGETS``) and its links resolved."""
        names = WIDGETS.get(n["type"], [])
        values = n.get("widgets_values")
        if isinstance(values, dict):
            inputs = dict(values)
        else:
            inputs = {names[i] if i < len(names) else f"widget_{i}": v for i, v in enumerate(values or [])}
        types = {}
        for inp in n.get("inputs") or []:
            types[inp["name"]] = inp.get("type", "")
            if inp.get("link") is not None and inp["link"] in scope.links:
                o = scope.links[inp["link"]]
                src = self.origin(scope, o[0], o[1])
                if src is not None:
                    inputs[inp["name"]] = src
        title = n.get("title")
        return Node(f"{scope.prefix}{n['id']}", n["type"], scope.mode or n.get("mode", 0),
                    title if isinstance(title, str) else None, inputs, types,
                    [o.get("type", "") for o in n.get("outputs") or []])

    def child(self, scope: _Scope, inst: dict) -> _Scope:
        """The scope inside subgraph instance ``inst`` of ``scope``."""
        sg = self.defs[inst["type"]]
        if scope.prefix.count(":") >= MAX_SUBGRAPH_DEPTH:
            raise WorkflowError(f"subgraph {sg.get('name', sg['id'])!r} is nested more than {MAX_SUBGRAPH_DEPTH} "
                                "levels deep (MAX_SUBGRAPH_DEPTH): does it contain itself?")
        if sg["id"] not in self.parsed:
            where = f"subgraph {sg.get('name', sg['id'])!r}"
            ins = sg.get("inputs") or []
            _expect(isinstance(ins, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in ins),
                    f"{where} inputs", "a list of objects with a 'name'", ins)
            self.parsed[sg["id"]] = (_nodes(sg, where), _links(sg, where))
        nodes, links = self.parsed[sg["id"]]
        mode = scope.mode or inst.get("mode", 0)
        return _Scope(f"{scope.prefix}{inst['id']}:", nodes, links, scope, inst, sg, mode)

    def origin(self, scope: _Scope, node_id: Any, slot: Any) -> Optional[Link]:
        """The real node output behind a link's origin, across subgraph boundaries (a loop, not recursion)."""
        seen = set()
        while True:
            key = (scope.prefix, node_id, slot)
            if key in seen:
                at = scope.prefix.rstrip(":") if node_id == SUBGRAPH_IN else f"{scope.prefix}{node_id}"
                raise WorkflowError(f"the links through subgraph instance #{at} form a cycle (its output feeds back "
                                    "into its own input); remove one of these links")
            seen.add(key)
            if node_id == SUBGRAPH_IN:  # the instance's input of that name, in the parent graph
                outside = self._instance_input(scope, slot)
                if outside is None:
                    return None  # not connected outside: the inner node's own widget value applies
                (node_id, slot), scope = outside, scope.parent
                continue
            node = scope.nodes.get(node_id)
            if node is None:
                raise WorkflowError(f"a link comes from node {scope.prefix}{node_id}, which does not exist")
            if node["type"] not in self.defs:
                return Link(f"{scope.prefix}{node_id}", slot)
            scope = self.child(scope, node)  # into the subgraph, to whatever feeds its output `slot`
            inner = next((o for o in scope.links.values() if o[2] == SUBGRAPH_OUT and o[3] == slot), None)
            if inner is None:
                return None
            node_id, slot = inner[:2]

    @staticmethod
    def _instance_input(scope: _Scope, slot: Any) -> Optional[tuple]:
        """(origin id, origin slot) in the parent graph of the instance's input ``slot``; None if unlinked."""
        ins = scope.definition.get("inputs") or []
        if not isinstance(slot, int) or not 0 <= slot < len(ins):
            raise WorkflowError(f"subgraph instance #{scope.prefix.rstrip(':')}: a link uses input slot "
                                f"{slot!r}, which its definition does not have")
        name = ins[slot]["name"]
        inp = next((i for i in scope.instance.get("inputs") or [] if i["name"] == name), None)
        if inp is None or inp.get("link") is None or inp["link"] not in scope.parent.links:
            return None
        return tuple(scope.parent.links[inp["link"]][:2])
