"""The token report of a prompt under a template: what ``workbench tokens`` prints and the template
panel shows (token ids and strings, dropped / kept, vision tokens per image), as one library function.

The tokens are those the encoder sees: ``templates.render`` / ``tokenize`` with the real Qwen2.5
tokenizer, reference images through the real vision preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from workbench.config import TemplateConfig

SAMPLE_IMAGE = "asset:sample_reference.png"  # the panel's stand-in reference image


@dataclass
class TokenReport:
    """Tokens of one rendered prompt, as data (tests and notebooks read it directly)."""

    pieces: list[str]  # token strings, vision pads expanded
    ids: list[int]
    drop: int
    vision_tokens: list[int]  # per image
    template: str = ""  # the template's name
    max_sequence_length: Optional[int] = None  # the run's limit on the kept tokens (None: not checked)

    @property
    def kept(self) -> int:
        return len(self.ids) - self.drop

    @property
    def cut(self) -> int:
        """Kept tokens past ``max_sequence_length``: a run cuts them without an error (its notes say so)."""
        return max(0, self.kept - self.max_sequence_length) if self.max_sequence_length else 0

    def as_dict(self) -> dict:
        """``workbench tokens --json``."""
        return {"template": self.template, "drop": self.drop, "kept": self.kept, "cut": self.cut,
                "max_sequence_length": self.max_sequence_length,
                "vision_tokens": self.vision_tokens, "ids": self.ids, "tokens": self.pieces}

    def lines(self) -> list[str]:
        """``workbench tokens``'s text: a summary, then one line per token (drop / keep / cut)."""
        head = (f"template {self.template}: {len(self.ids)} tokens, drop {self.drop}, keep {self.kept}, "
                f"vision tokens per image {self.vision_tokens}")
        if self.cut:
            head += f"; max_sequence_length={self.max_sequence_length} cuts the last {self.cut} (marked cut)"
        end = self.drop + self.kept - self.cut

        def kind(i: int) -> str:
            return "drop" if i < self.drop else "keep" if i < end else "cut "

        return [head] + [f"{kind(i)} {i:5d} {tid:7d} {piece!r}" for i, (tid, piece) in enumerate(zip(self.ids, self.pieces))]


def token_report(template: TemplateConfig, prompt: str, images: Sequence = (), area: int = 1024 * 1024,
                 max_sequence_length: Optional[int] = None) -> TokenReport:
    """Render + tokenize ``prompt`` with ``template`` and the reference ``images`` (PIL). A Qwen-Image-2.1
    template (``family``) tokenizes with the Qwen3 tokenizer, each image sized as 2.1 sizes its condition
    images: ~``area`` pixels (``reference.vae_area``; diffusers' ``output_resolution``^2), sides of 32.
    ``max_sequence_length``: the run's limit, to count (and mark) the kept tokens a run would cut."""
    from workbench.templates import render, tokenize
    from workbench.tokenizer import load_qwen3_tokenizer, load_tokenizer
    from workbench.vision import QWEN3_VL, preprocess

    if template.family == "qwen-image-2.1":
        from workbench.stages.reference import area_size

        tok = load_qwen3_tokenizer()
        sized = [img.resize(area_size(img.width, img.height, area, 32)) for img in images]
        grids = preprocess(sized, spec=QWEN3_VL).grids if images else []
    else:
        tok = load_tokenizer()
        grids = preprocess(list(images)).grids if images else []
    t = tokenize(tok, render(template, prompt, len(grids), tok), grids)
    return TokenReport(tok.convert_ids_to_tokens(t.input_ids), t.input_ids, t.drop, t.vision_tokens, template.name,
                       max_sequence_length)


def sample_images(n: int) -> list:
    """``n`` copies of the shipped sample image (the template panel's reference images)."""
    from workbench.pipeline import load_image

    return [load_image(SAMPLE_IMAGE)] * n if n else []


def inspect_template(template: TemplateConfig, prompt: str, num_images: int = 0) -> TokenReport:
    """``token_report`` with ``num_images`` copies of the sample image."""
    return token_report(template, prompt, sample_images(num_images))


def template_names() -> list[str]:
    """The templates of ``conf/template/``."""
    from workbench.config.build import options

    return options("template")


def conf_template(name: str) -> TemplateConfig:
    """A template of ``conf/template/`` on its own (the full config would insist on reference images)."""
    from workbench.config.build import group_config

    return group_config("template", name)


# A browser's one-line text field drops newlines as soon as it is edited, and every shipped drop marker
# ends in one ("<|im_start|>user\n"): clicking into the field used to change what the encoder sees
# (34 dropped -> 33). The panel shows the marker with its control characters written as escapes, and
# reads them back, so the field holds exactly the marker.
_SHOWN = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_READ = {v[1]: k for k, v in _SHOWN.items()}


def show_marker(marker: str) -> str:
    """``"<|im_start|>user\\n"`` (a real newline) -> the one-line text ``<|im_start|>user\\n`` (backslash, n)."""
    return "".join(_SHOWN.get(c, c) for c in marker)


def read_marker(shown: str) -> str:
    """The inverse of ``show_marker``; a backslash before any other character stays as typed."""
    import re

    return re.sub(r"\\(.)", lambda m: _READ.get(m.group(1), m.group(0)), shown, flags=re.S)
