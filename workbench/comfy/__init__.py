"""``workbench import-comfy``: a ComfyUI workflow (UI JSON, API JSON or a PNG) -> an experiment config.

graph (file -> flat nodes) -> resolve (links -> source values) -> mapping (nodes -> our settings +
report) -> writer (YAML), driven by cli; node_types and schema_support are the two vocabularies
(ComfyUI's node types, our config schema's keys). ComfyUI graphs route values through Primitive and
switch nodes, subgraphs, reroutes and bypassed nodes, and the KSampler's own stored widget values are
often stale: every value is read by following links back to where it comes from. Anything that
cannot be mapped onto our config is reported (printed, and as a comment block at the top of the
YAML), never silently dropped. ComfyUI is GPL-3.0: this reads its file format only.
"""
