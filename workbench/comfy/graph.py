"""Reading a ComfyUI workflow file (UI JSON, API JSON, or a PNG's text chunks) into one flat graph.

Both formats become the same ``{flat id: Node}`` dict: subgraph instances are flattened (inner ids
like ``"76:3"``, as ComfyUI's API format writes them), links are resolved across subgraph boundaries,
and an instance's muted / bypassed mode is inherited by the nodes inside it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from workbench.comfy.node_types import WIDGETS
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


# Limits on what a workflow file may hold, checked before it is read or walked (real ComfyUI workflows
# are ~50 KB, nest ~9 levels deep and have a few hundred nodes): a hostile or broken file is refused
# with a message naming the limit instead of exhausting memory or the stack.
MAX_BYTES = 8 * 1024 * 1024  # a .json file, or a PNG's workflow text chunk
MAX_DEPTH = 64  # JSON nesting ({} and [] levels)
MAX_NODES = 10_000  # nodes after flattening subgraphs
MAX_SUBGRAPH_DEPTH = 16  # subgraphs inside subgraphs

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal (brackets in it do not nest)


def read_workflow(path: Path) -> tuple[dict[str, Node], str]:
    """Flat nodes of a workflow file (UI JSON, API JSON, or PNG with ComfyUI's text chunks) + a description."""
    path = Path(path)
    if path.is_dir():
        raise WorkflowError(f"{path} is a folder: give a workflow .json (UI or API format) or a ComfyUI .png")
    if not path.exists():
        raise WorkflowError(f"workflow file {str(path)!r} not found")
    if not path.is_file():  # a pipe or a device would block or never end
        raise WorkflowError(f"{path} is not a regular file: give a workflow .json (UI or API format) or a ComfyUI .png")
    try:
        with path.open("rb") as f:
            is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        size = path.stat().st_size
    except OSError as err:
        raise WorkflowError(f"cannot read workflow file {path}: {err.strerror or err}") from None
    if is_png:
        return _read_png(path)
    if size > MAX_BYTES:  # checked before reading: a huge file is refused without loading it
        raise WorkflowError(f"{path} is {size / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB limit for a "
                            "workflow file (MAX_BYTES): is it a ComfyUI workflow export?")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise WorkflowError(f"cannot read workflow file {path}: {err.strerror or err}") from None
    data = _parse_json(raw, str(path))
    nodes, kind = _parse(data, str(path))
    return nodes, f"{path.name} ({kind})"


def _read_png(path: Path) -> tuple[dict[str, Node], str]:
    import zlib

    from PIL import Image, UnidentifiedImageError

    try:  # Image.open parses the chunks up to the image data, where ComfyUI puts its text chunks
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError, zlib.error, EOFError) as err:
        # PIL: SyntaxError "broken PNG file" (bad CRC), ValueError for chunks over its safety limits
        raise WorkflowError(f"{path}: the PNG is corrupt or truncated, its text chunks cannot be read "
                            f"({type(err).__name__}: {err}); export the workflow from ComfyUI as .json "
                            "instead") from None
    # `prompt` (API) is what ComfyUI actually executed; `workflow` (UI) is the editable graph.
    for key in ("prompt", "workflow"):
        if key in text:
            where = f"{path} (PNG text chunk {key!r})"
            if not isinstance(text[key], str):
                raise WorkflowError(f"{where} is not text")
            raw = text[key].encode("utf-8", "surrogatepass")
            if len(raw) > MAX_BYTES:
                raise WorkflowError(f"{where} is {len(raw) / 2**20:.1f} MiB, over the {MAX_BYTES // 2**20} MiB "
                                    "limit for a workflow (MAX_BYTES)")
            nodes, kind = _parse(_parse_json(raw, where), where)
            return nodes, f"{path.name} (PNG text chunk '{key}', {kind})"
    hint = " (it is a workbench image: use `workbench reproduce`)" if "workbench" in text else ""
    raise WorkflowError(f"{path} has no ComfyUI 'prompt' or 'workflow' text chunk{hint}")


def _refuse_constant(name: str) -> Any:
    raise WorkflowError(f"non-finite number {name} (not JSON; ComfyUI never writes it)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WorkflowError(f"number {text} overflows a float (not a value ComfyUI writes)")
    return value


def json_depth(raw: bytes) -> int:
    """Deepest {} / [] nesting of a JSON text, without parsing it (strings do not count)."""
    import numpy as np

    b = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (b == ord("[")).astype(np.int32) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def _parse_json(raw: bytes, where: str) -> Any:
    """JSON from UTF-8 bytes, refusing non-UTF-8 text, nesting over MAX_DEPTH and non-finite numbers."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise WorkflowError(f"{where} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}): "
                            "ComfyUI saves workflows as UTF-8 JSON; re-export or re-save it as UTF-8") from None
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise WorkflowError(f"{where} nests {depth} levels deep, over the limit of {MAX_DEPTH} (MAX_DEPTH; "
                            "ComfyUI workflows nest about 9): not a ComfyUI workflow")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{where} is not valid JSON: {err}") from None
    except WorkflowError as err:
        raise WorkflowError(f"{where}: {err}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer over Python's 4300-digit conversion limit
        raise WorkflowError(f"{where} cannot be read as JSON: {err}") from None


def _parse(data: Any, where: str) -> tuple[dict[str, Node], str]:
    try:
        return parse_workflow(data)
    except WorkflowError as err:
        raise WorkflowError(f"{where}: {err}") from None


def parse_workflow(data: Any) -> tuple[dict[str, Node], str]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return flatten_ui(data), f"ComfyUI UI workflow, version {data.get('version', '?')}"
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a /prompt request body
        data = data["prompt"]
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return flatten_api(data), "ComfyUI API workflow"
    raise WorkflowError("not a ComfyUI workflow: expected UI format (a 'nodes' list) or API format "
                        "({id: {class_type, inputs}})")


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
    defs = {sg["id"]: sg for sg in subgraphs}
    parsed: dict[str, tuple[dict, dict]] = {}  # subgraph id -> (nodes, links), checked once
    out: dict[str, Node] = {}

    def child(scope: _Scope, inst: dict) -> _Scope:
        sg = defs[inst["type"]]
        if scope.prefix.count(":") >= MAX_SUBGRAPH_DEPTH:
            raise WorkflowError(f"subgraph {sg.get('name', sg['id'])!r} is nested more than {MAX_SUBGRAPH_DEPTH} "
                                "levels deep (MAX_SUBGRAPH_DEPTH): does it contain itself?")
        if sg["id"] not in parsed:
            where = f"subgraph {sg.get('name', sg['id'])!r}"
            ins = sg.get("inputs") or []
            _expect(isinstance(ins, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in ins),
                    f"{where} inputs", "a list of objects with a 'name'", ins)
            parsed[sg["id"]] = (_nodes(sg, where), _links(sg, where))
        nodes, links = parsed[sg["id"]]
        mode = scope.mode or inst.get("mode", 0)
        return _Scope(f"{scope.prefix}{inst['id']}:", nodes, links, scope, inst, sg, mode)

    def origin(scope: _Scope, node_id: Any, slot: Any) -> Optional[Link]:
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
                ins = scope.definition.get("inputs") or []
                if not isinstance(slot, int) or not 0 <= slot < len(ins):
                    raise WorkflowError(f"subgraph instance #{scope.prefix.rstrip(':')}: a link uses input slot "
                                        f"{slot!r}, which its definition does not have")
                name = ins[slot]["name"]
                inp = next((i for i in scope.instance.get("inputs") or [] if i["name"] == name), None)
                if inp is None or inp.get("link") is None or inp["link"] not in scope.parent.links:
                    return None  # not connected outside: the inner node's own widget value applies
                node_id, slot = scope.parent.links[inp["link"]][:2]
                scope = scope.parent
                continue
            node = scope.nodes.get(node_id)
            if node is None:
                raise WorkflowError(f"a link comes from node {scope.prefix}{node_id}, which does not exist")
            if node["type"] in defs:  # into the subgraph, to whatever feeds its output `slot`
                scope = child(scope, node)
                inner = next((o for o in scope.links.values() if o[2] == SUBGRAPH_OUT and o[3] == slot), None)
                if inner is None:
                    return None
                node_id, slot = inner[:2]
                continue
            return Link(f"{scope.prefix}{node_id}", slot)

    visited = [0]  # nodes met, subgraph instances included (empty instances nested deep are work too)

    def walk(scope: _Scope) -> None:
        for n in scope.nodes.values():
            visited[0] += 1
            if visited[0] > MAX_NODES:
                raise WorkflowError(f"more than {MAX_NODES} nodes once subgraphs are expanded (MAX_NODES): "
                                    "not a workflow this importer reads")
            if n["type"] in defs:
                walk(child(scope, n))
                continue
            names = WIDGETS.get(n["type"], [])
            values = n.get("widgets_values")
            if isinstance(values, dict):
                inputs = dict(values)
            else:
                values = values or []
                inputs = {names[i] if i < len(names) else f"widget_{i}": v for i, v in enumerate(values)}
            types = {}
            for inp in n.get("inputs") or []:
                types[inp["name"]] = inp.get("type", "")
                if inp.get("link") is not None and inp["link"] in scope.links:
                    o = scope.links[inp["link"]]
                    src = origin(scope, o[0], o[1])
                    if src is not None:
                        inputs[inp["name"]] = src
            flat_id = f"{scope.prefix}{n['id']}"
            title = n.get("title")
            out[flat_id] = Node(
                flat_id, n["type"], scope.mode or n.get("mode", 0), title if isinstance(title, str) else None,
                inputs, types, [o.get("type", "") for o in n.get("outputs") or []],
            )

    walk(_Scope("", _nodes(wf, "workflow"), _links(wf, "workflow")))
    return out


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
