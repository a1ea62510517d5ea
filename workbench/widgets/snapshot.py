"""A static copy of a panel's results, kept in the notebook file: an ordinary display output (an image
and an HTML table) beside the widget, updated in place when the panel finishes.

A saved notebook keeps widget views only as references to live kernel objects, so a notebook reopened
without its kernel shows "model not found" where each panel was; this output is plain data and stays.
The update can come from a panel's background thread: it is sent with the header of the cell that
displayed the panel, so JupyterLab routes it to that cell's output area and not to whichever cell
happens to run.
"""

from __future__ import annotations

import base64
import html
from typing import Optional


class StaticCopy:
    """A display output created with the panel; ``update`` replaces it (from any thread)."""

    def __init__(self, placeholder: str):
        from IPython.display import HTML, display

        self._handle = display(HTML(f"<div class='workbench-static-copy'><i>{html.escape(placeholder)}</i></div>"),
                               display_id=True)
        self._parent = _display_parent()

    def update(self, title: str, png: Optional[bytes], table_html: str) -> None:
        """Show ``title``, the image and the (already escaped) table in place of the earlier copy."""
        body = [f"<div class='workbench-static-copy'><b>{html.escape(title)}</b>"]
        if png:
            data = base64.b64encode(png).decode("ascii")
            body.append(f"<div><img src='data:image/png;base64,{data}' style='max-width:100%'></div>")
        body.append(f"{table_html}</div>")
        bundle = {"text/html": "".join(body), "text/plain": title}
        publisher = _display_publisher()
        current = _display_parent()
        # JupyterLab applies an update only in the output area of the cell the message names as parent,
        # so it goes out with the header of the cell that displayed the panel; nbclient / nbconvert apply
        # it by display id when it names the cell executing now: then it goes out once more that way
        self._send(bundle, publisher, self._parent)
        if current is not None and self._parent is not None and current.get("msg_id") != self._parent.get("msg_id"):
            self._send(bundle, publisher, current)

    def _send(self, bundle: dict, publisher, parent: Optional[dict]) -> None:
        token = None
        if parent is not None and hasattr(publisher, "set_thread_parent"):
            token = publisher.set_thread_parent(parent)  # this thread only; ipykernel >= 6
        try:
            self._handle.update(bundle, raw=True)
        finally:
            if token is not None:
                publisher.reset_thread_parent(token)


def _display_publisher():
    from IPython import get_ipython

    shell = get_ipython()
    return getattr(shell, "display_pub", None)


def _display_parent() -> Optional[dict]:
    """The header of the message being handled now (the cell that displays the panel), if the kernel says."""
    publisher = _display_publisher()
    header = getattr(publisher, "parent_header", None)
    return dict(header) if header else None
