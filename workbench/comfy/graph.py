"""Reading a ComfyUI workflow file (UI JSON, API JSON, or a PNG's text chunks) into one flat graph.

Both formats become the same ``{flat id: Node}`` dict: subgraph instances are flattened (inner ids
like ``"76:3"``, as ComfyUI's API format writes them), links are resolved across subgraph boundaries,
and an instance's muted / bypassed mode is inherited by the nodes inside it.
"""

from __future__ import annotations

from workbench.errors import InputError
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from workbench.comfy.node_types import WIDGETS

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


def read_workflow(path: Path) -> tuple[dict[str, Node], str]:
    """Flat nodes of a workflow file (UI JSON, API JSON, or PNG with ComfyUI's text chunks) + a description."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"workflow file {str(path)!r} not found")
    if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
        # `prompt` (API) is what ComfyUI actually executed; `workflow` (UI) is the editable graph.
        for key in ("prompt", "workflow"):
            if key in text:
                data = _parse_json(text[key], f"{path} (PNG chunk {key!r})")
                nodes, kind = parse_workflow(data)
                return nodes, f"{path.name} (PNG text chunk '{key}', {kind})"
        hint = " (it is a workbench image: use `workbench reproduce`)" if "workbench" in text else ""
        raise WorkflowError(f"{path} has no ComfyUI 'prompt' or 'workflow' text chunk{hint}")
    nodes, kind = parse_workflow(_parse_json(path.read_text(encoding="utf-8"), str(path)))
    return nodes, f"{path.name} ({kind})"


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{where} is not valid JSON: {err}") from None


def parse_workflow(data: Any) -> tuple[dict[str, Node], str]:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return flatten_ui(data), f"ComfyUI UI workflow, version {data.get('version', '?')}"
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a /prompt request body
        data = data["prompt"]
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return flatten_api(data), "ComfyUI API workflow"
    raise WorkflowError("not a ComfyUI workflow: expected UI format (a 'nodes' list) or API format "
                        "({id: {class_type, inputs}})")


def flatten_api(prompt: dict) -> dict[str, Node]:
    nodes = {}
    for nid, n in prompt.items():
        inputs = {}
        for name, v in (n.get("inputs") or {}).items():
            is_link = isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int)
            inputs[name] = Link(str(v[0]), v[1]) if is_link else v
        nodes[str(nid)] = Node(str(nid), n["class_type"], 0, (n.get("_meta") or {}).get("title"), inputs)
    return nodes


def _links(graph: dict) -> dict[int, tuple]:
    """Link id -> (origin id, origin slot); top level stores arrays, subgraphs store objects."""
    out = {}
    for link in graph.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        else:
            out[link[0]] = (link[1], link[2], link[3], link[4])
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
    defs = {sg["id"]: sg for sg in (wf.get("definitions") or {}).get("subgraphs") or []}
    out: dict[str, Node] = {}

    def child(scope: _Scope, inst: dict) -> _Scope:
        sg = defs[inst["type"]]
        if scope.prefix.count(":") > 16:
            raise WorkflowError(f"subgraph {sg.get('name', sg['id'])!r} nests itself too deep")
        mode = scope.mode or inst.get("mode", 0)
        return _Scope(f"{scope.prefix}{inst['id']}:", {n["id"]: n for n in sg.get("nodes", [])}, _links(sg),
                      scope, inst, sg, mode)

    def origin(scope: _Scope, node_id: int, slot: int) -> Optional[Link]:
        if node_id == SUBGRAPH_IN:  # the instance's input of that name, in the parent graph
            name = scope.definition["inputs"][slot]["name"]
            inp = next((i for i in scope.instance.get("inputs", []) if i["name"] == name), None)
            if inp is None or inp.get("link") is None:
                return None  # not connected outside: the inner node's own widget value applies
            o = scope.parent.links[inp["link"]]
            return origin(scope.parent, o[0], o[1])
        node = scope.nodes.get(node_id)
        if node is None:
            raise WorkflowError(f"a link comes from node {scope.prefix}{node_id}, which does not exist")
        if node["type"] in defs:  # into the subgraph, to whatever feeds its output `slot`
            inner = child(scope, node)
            for o in inner.links.values():
                if o[2] == SUBGRAPH_OUT and o[3] == slot:
                    return origin(inner, o[0], o[1])
            return None
        return Link(f"{scope.prefix}{node_id}", slot)

    def walk(scope: _Scope) -> None:
        for n in scope.nodes.values():
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
            out[flat_id] = Node(
                flat_id, n["type"], scope.mode or n.get("mode", 0), n.get("title"), inputs, types,
                [o.get("type", "") for o in n.get("outputs") or []],
            )

    walk(_Scope("", {n["id"]: n for n in wf["nodes"]}, _links(wf)))
    return out
