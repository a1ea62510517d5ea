"""Three small browser views the stock ipywidgets lack: a clickable grid image, a sortable table, a
copy-to-clipboard button. anywidget carries their JavaScript (no build step, no lab extension of our
own); Python holds the state, the browser only draws and reports clicks.

Written by hand because no maintained widget does these exact jobs: ``ipywidgets.Image`` has no click
position, and the data-grid widgets on PyPI (ipydatagrid, itables) are a large dependency for sorting
one small table that pandas has already styled.
"""

from __future__ import annotations

from typing import Callable

import anywidget
import traitlets

_GRID_ESM = r"""
function render({ model, el }) {
  const box = document.createElement("div");
  box.className = "wb-grid";
  box.style.position = "relative";
  const img = document.createElement("img");
  img.className = "wb-grid-image";
  img.style.display = "block";
  const hover = document.createElement("div");
  const chosen = document.createElement("div");
  for (const [mark, colour] of [[hover, "#1976d2"], [chosen, "#e65100"]]) {
    Object.assign(mark.style, { position: "absolute", border: `3px solid ${colour}`, pointerEvents: "none", display: "none" });
  }
  box.append(img, hover, chosen);
  el.append(box);
  let url = null;

  function tileAt(ev) {
    const r = img.getBoundingClientRect();
    const [w, h] = model.get("size");
    const x = ((ev.clientX - r.left) * w) / r.width, y = ((ev.clientY - r.top) * h) / r.height;
    for (const t of model.get("tiles")) {
      if (x >= t[1] && x < t[3] && y >= t[2] && y < t[4]) return t;
    }
    return null;
  }
  function place(mark, t) {
    if (!t) { mark.style.display = "none"; return; }
    const [w] = model.get("size");
    const s = img.clientWidth / w;
    Object.assign(mark.style, {
      display: "block", left: `${t[1] * s - 3}px`, top: `${t[2] * s - 3}px`,
      width: `${(t[3] - t[1]) * s}px`, height: `${(t[4] - t[2]) * s}px`,
    });
  }
  function placeChosen() {
    const i = model.get("selected");
    place(chosen, model.get("tiles").find((t) => t[0] === i) || null);
  }
  function fit() {
    const whole = model.get("fit");
    img.style.maxWidth = whole ? "100%" : "none";
    el.style.overflow = whole ? "visible" : "auto";
    el.style.maxHeight = whole ? "" : "80vh";
    placeChosen();
  }
  function draw() {
    const data = model.get("png");
    if (url) URL.revokeObjectURL(url);
    url = null;
    if (!data || data.byteLength === 0) { box.style.display = "none"; return; }
    url = URL.createObjectURL(new Blob([data], { type: "image/png" }));
    img.src = url;
    box.style.display = "";
  }
  img.addEventListener("load", fit);
  img.addEventListener("mousemove", (ev) => {
    const t = tileAt(ev);
    place(hover, t);
    img.style.cursor = t ? "pointer" : "default";
    img.title = t ? (model.get("labels")[String(t[0])] || "") : "";
  });
  img.addEventListener("mouseleave", () => place(hover, null));
  img.addEventListener("click", (ev) => {
    const t = tileAt(ev);
    if (t) model.send({ event: "click", cell: t[0] });
  });
  model.on("change:png", draw);
  model.on("change:fit", fit);
  model.on("change:selected", placeChosen);
  draw();
  return () => { if (url) URL.revokeObjectURL(url); };
}
export default { render };
"""

_TABLE_ESM = r"""
function cellValue(row, col) {
  const c = row.children[col];
  const text = c ? c.textContent.trim() : "";
  const n = Number(text.replace(/,/g, ""));
  return { text, number: text !== "" && Number.isFinite(n) ? n : null };
}
function render({ model, el }) {
  const box = document.createElement("div");
  box.className = "wb-table";
  box.style.overflowX = "auto";
  el.append(box);
  let sortCol = -1, ascending = true;

  function sortRows(table) {
    const body = table.tBodies[0];
    if (!body || sortCol < 0) return;
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellValue(a, sortCol), y = cellValue(b, sortCol);
      if (x.text === "" || y.text === "") return (x.text === "") - (y.text === "");  // blanks last, either way
      const d = x.number !== null && y.number !== null ? x.number - y.number : x.text.localeCompare(y.text);
      return ascending ? d : -d;
    });
    for (const r of rows) body.append(r);
  }
  function draw() {
    box.innerHTML = model.get("html");  // pandas Styler output, values escaped in Python (escape="html")
    const table = box.querySelector("table");
    if (!table || !table.tHead) return;
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((th, col) => {
      th.style.cursor = "pointer";
      th.title = "click to sort";
      th.dataset.sorted = col === sortCol ? (ascending ? "ascending" : "descending") : "";
      th.addEventListener("click", () => {
        ascending = col === sortCol ? !ascending : true;
        sortCol = col;
        draw();
      });
    });
    sortRows(table);
  }
  model.on("change:html", draw);
  draw();
}
export default { render };
"""

_COPY_ESM = r"""
function render({ model, el }) {
  const button = document.createElement("button");
  button.className = "jupyter-button widget-button wb-copy";
  button.textContent = model.get("label");
  button.addEventListener("click", async () => {
    const text = model.get("text");
    let ok = true;
    try {
      await navigator.clipboard.writeText(text);
    } catch (err) {  // no clipboard permission (plain http, some browsers): the selection route
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      ok = document.execCommand("copy");
      area.remove();
    }
    button.textContent = ok ? "copied" : "copy failed: select the text";
    model.set("copies", model.get("copies") + 1);
    model.save_changes();
    setTimeout(() => { button.textContent = model.get("label"); }, 1500);
  });
  el.append(button);
}
export default { render };
"""


class GridView(anywidget.AnyWidget):
    """The sweep grid as an image whose tiles can be clicked (``on_click(cell_index)``); fits the width,
    or 1:1 in a scroll box (``fit=False``) where every pixel of a large grid is readable."""

    _esm = _GRID_ESM
    png = traitlets.Bytes(b"").tag(sync=True)
    size = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)  # the PNG's pixels (w, h)
    tiles = traitlets.List([]).tag(sync=True)  # [cell index, x0, y0, x1, y1] in PNG pixels
    labels = traitlets.Dict({}).tag(sync=True)  # str(cell index) -> hover text
    selected = traitlets.Int(-1).tag(sync=True)  # the outlined tile; -1 none
    fit = traitlets.Bool(True).tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._handlers: list[Callable[[int], None]] = []
        self.on_msg(self._message)

    def on_click(self, handler: Callable[[int], None]) -> None:
        self._handlers.append(handler)

    def click(self, cell: int) -> None:
        """What a click on the tile of ``cell`` does (tests and scripts use it without a browser)."""
        self._message(self, {"event": "click", "cell": cell}, [])

    def _message(self, _widget, content, _buffers) -> None:
        if not isinstance(content, dict) or content.get("event") != "click":
            return
        cell = content.get("cell")
        if not isinstance(cell, int) or all(t[0] != cell for t in self.tiles):
            return  # a message from the browser is data: only a tile shown can be chosen
        self.selected = cell
        for handler in self._handlers:
            handler(cell)


class SortableTable(anywidget.AnyWidget):
    """An HTML table (pandas Styler output) whose column headers sort it; numbers sort as numbers,
    blank cells (pending, failed) stay last."""

    _esm = _TABLE_ESM
    html = traitlets.Unicode("").tag(sync=True)


class CopyButton(anywidget.AnyWidget):
    """Copies ``text`` to the clipboard; ``copies`` counts the clicks (the browser reports each one)."""

    _esm = _COPY_ESM
    text = traitlets.Unicode("").tag(sync=True)
    label = traitlets.Unicode("copy").tag(sync=True)
    copies = traitlets.Int(0).tag(sync=True)


def tile_boxes(layout) -> list[list[int]]:
    """``GridView.tiles`` from a ``workbench.sweep.grid.GridLayout``."""
    return [[int(i), *map(int, box)] for i, box in sorted(layout.tiles.items())]

