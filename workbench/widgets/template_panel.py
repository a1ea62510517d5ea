"""Template panel: edit a template, see its tokens live (kept / dropped, drop count, vision tokens).

A view over ``workbench.token_report`` (the report ``workbench tokens`` prints): the tokens the
encoder sees; reference images are the shipped sample image.
"""

from __future__ import annotations

import html
from dataclasses import replace
from typing import Optional

import ipywidgets as W

from workbench.config import ConfigError, TemplateConfig

from workbench.token_report import TokenReport, conf_template, inspect_template, read_marker, show_marker, template_names


def tokens_html(report: TokenReport) -> str:
    """Token chips: dropped grey and struck through, kept green, runs of vision pads collapsed."""
    from workbench.tokenizer import IMAGE_PAD_ID

    chips, i = [], 0
    while i < len(report.ids):
        j = i
        if report.ids[i] == IMAGE_PAD_ID:
            while j + 1 < len(report.ids) and report.ids[j + 1] == IMAGE_PAD_ID:
                j += 1
        text = report.pieces[i].replace("Ċ", "\u21b5").replace("Ġ", "\u00b7")  # byte-level BPE newline / space
        if j > i:
            text = f"{text} x{j - i + 1}"
        kind = "drop" if i < report.drop else ("vision" if report.ids[i] == IMAGE_PAD_ID else "keep")
        style = {
            "drop": "background:#eee;color:#888;text-decoration:line-through",
            "keep": "background:#dff5df",
            "vision": "background:#dde8ff",
        }[kind]
        chips.append(f"<span class='tok-{kind}' title='{report.ids[i]}' style='{style};margin:1px;padding:0 2px;"
                     f"border-radius:3px;font-family:monospace'>{html.escape(text)}</span>")
        i = j + 1
    # white-space normal: ipywidgets' HTML widget does not wrap by default, and a long template is one line
    return ("<div style='line-height:1.9;white-space:normal;overflow-wrap:anywhere;max-width:100%'>"
            + "".join(chips) + "</div>")


class TemplatePanel(W.VBox):
    """Pick a template, edit its text / drop marker / prompt / image count; tokens update as you type.

    Edits are kept per template: choosing another template and coming back restores them (the summary
    says so), and Reset returns the chosen template to its conf/ text.
    """

    def __init__(self, template: str = "qwen_t2i", prompt: str = "a red fox in the snow", images: int = 0):
        self.base_template = conf_template(template)
        self.choose = W.Dropdown(options=template_names(), value=template, description="template")
        self.text = W.Textarea(value=self.base_template.text, description="text", continuous_update=True,
                               layout=W.Layout(width="720px", height="120px"))
        # shown with escapes (\n for the newline every shipped marker ends in): a text field drops newlines
        self.drop_until = W.Text(value=show_marker(self.base_template.drop_until or ""), description="drop until",
                                 placeholder="empty: keep every token; \\n = newline", continuous_update=True,
                                 layout=W.Layout(width="420px"))
        self.prompt = W.Text(value=prompt, description="prompt", continuous_update=True, layout=W.Layout(width="720px"))
        self.images = W.BoundedIntText(value=images, min=0, max=8, description="images")
        self.reset_button = W.Button(description="Reset", icon="undo", tooltip="back to the template's conf/ text")
        self.summary = W.HTML()
        self.tokens = W.HTML(layout=W.Layout(width="100%"))
        self._edits: dict[str, tuple[str, str]] = {}  # template -> (text, drop marker) the user left it with
        self.report: Optional[TokenReport] = None
        self.error: Optional[str] = None
        self._switching = False
        self.choose.observe(self._on_choose, names="value")
        self.reset_button.on_click(lambda _: self.reset())
        for w in (self.text, self.drop_until, self.prompt, self.images):
            w.observe(self.update, names="value")
        super().__init__([W.HBox([self.choose, self.reset_button]), self.text, self.drop_until, self.prompt, self.images, self.summary, self.tokens])
        self.update()

    @property
    def template(self) -> TemplateConfig:
        """The edited template (raises ``ConfigError`` when it is not valid), for ``Workbench.encode``."""
        text = self.text.value
        has_images = "{images}" in text
        max_images = max(self.base_template.max_images, self.images.value, 1) if has_images else 0
        return replace(
            self.base_template,
            name=self.base_template.name + ("" if text == self.base_template.text else "*"),
            text=text,
            drop_until=read_marker(self.drop_until.value) or None,
            min_images=0,
            max_images=max_images,
        )

    def _edited(self) -> bool:
        return (self.text.value, self.drop_until.value) != (self.base_template.text,
                                                            show_marker(self.base_template.drop_until or ""))

    def _on_choose(self, change) -> None:
        if change["old"] is not None and self._edited():
            self._edits[change["old"]] = (self.text.value, self.drop_until.value)
        self._load(change["new"], self._edits.get(change["new"]))

    def reset(self) -> None:
        """The chosen template's conf/ text and marker again (its kept edits are forgotten)."""
        self._edits.pop(self.choose.value, None)
        self._load(self.choose.value, None)

    def _load(self, name: str, edits: Optional[tuple[str, str]]) -> None:
        self.base_template = conf_template(name)
        text, marker = edits or (self.base_template.text, show_marker(self.base_template.drop_until or ""))
        self._switching = True  # one update after all fields changed, not one per field
        try:
            self.text.value = text
            self.drop_until.value = marker
            if self.base_template.max_images == 0:
                self.images.value = 0
            elif self.images.value == 0:
                self.images.value = self.base_template.min_images or 1
        finally:
            self._switching = False
        self.update()

    def update(self, change=None) -> None:
        from workbench.templates import TemplateError

        if self._switching:
            return
        try:
            self.report = inspect_template(self.template, self.prompt.value, self.images.value)
            self.error = None
        except (ConfigError, TemplateError) as err:
            self.report, self.error = None, str(err)
            self.summary.value = f"<span style='color:#a00'>{html.escape(self.error)}</span>"
            self.tokens.value = ""
            return
        r = self.report
        vision = f", vision tokens per image {r.vision_tokens}" if r.vision_tokens else ""
        edited = (f" <i>(your edits of {html.escape(self.choose.value)}; Reset for its conf/ text)</i>"
                  if self._edited() else "")
        self.summary.value = (
            f"<b>{len(r.ids)}</b> tokens: <b>{r.drop}</b> dropped (system prefix), <b>{r.kept}</b> kept{vision}{edited}"
        )
        self.tokens.value = tokens_html(r)

    def __repr__(self) -> str:
        r = self.report
        state = f"error={self.error!r}" if r is None else f"tokens={len(r.ids)}, drop={r.drop}, kept={r.kept}"
        return f"TemplatePanel(template={self.choose.value!r}, {state})"
