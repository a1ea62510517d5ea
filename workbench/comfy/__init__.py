"""``workbench import-comfy``: a ComfyUI workflow (UI JSON, API JSON or a PNG) -> an experiment config.

reader (file -> the flat ``graph`` of nodes; ``flatten`` expands subgraphs) -> resolve (links ->
source values) -> mapping (nodes -> our settings + report) -> writer (YAML), driven by cli;
node_types is ComfyUI's vocabulary (widget orders; routing, note and output node types).

ComfyUI graphs route values through Primitive and switch nodes, subgraphs, reroutes and bypassed
nodes, and the KSampler's own stored widget values are often stale: every value is read by following
links back to where it comes from. Anything that cannot be mapped onto our config is reported
(printed, and as a comment block at the top of the YAML), never silently dropped. ComfyUI is
GPL-3.0: this reads its file format only.

Workflow files are untrusted input: reader.MAX_BYTES / MAX_DEPTH, flatten.MAX_NODES /
MAX_SUBGRAPH_DEPTH and resolve.MAX_ROUTE bound the work before it is done, link cycles are refused
naming their nodes, values of the wrong type name the node and input, and the YAML is written
atomically (writer.write_yaml).
"""
