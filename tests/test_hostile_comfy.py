"""Hostile and careless input to ``workbench import-comfy`` (issue 12): one test per class, message matched.

Classes: link cycles (model path, conditioning path, a switch feeding itself; API and UI formats, and
across a subgraph boundary), wrong value types, non-UTF-8 text, runaway sizes (file size checked before
reading, JSON nesting depth, node count, subgraph fan-out), non-finite / oversized numbers, corrupt PNGs,
and the ``-o`` path (a folder, under a file, an existing file, a failed write: nothing half-written).
Every refusal is a one-line ``error: ...`` on stderr with exit code 2 (3 for a failed write).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from workbench.comfy import flatten, reader
from workbench.cli.import_comfy import main
from workbench.comfy.flatten import flatten_api
from workbench.comfy.graph import Link, WorkflowError
from workbench.comfy.mapping import import_workflow
from workbench.comfy.resolve import Resolver

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfy_workflows"
REPO = Path(__file__).resolve().parents[1]


def node(type_: str, **inputs) -> dict:
    return {"class_type": type_, "inputs": inputs}


def api() -> dict:
    """A minimal, valid API-format text-to-image workflow."""
    return {
        "1": node("UNETLoader", unet_name="u.safetensors", weight_dtype="default"),
        "2": node("CLIPLoader", clip_name="te.safetensors", type="qwen_image"),
        "3": node("VAELoader", vae_name="vae.safetensors"),
        "4": node("ModelSamplingAuraFlow", model=["1", 0], shift=3.1),
        "5": node("CLIPTextEncode", text="a fox", clip=["2", 0]),
        "6": node("CLIPTextEncode", text="", clip=["2", 0]),
        "7": node("EmptySD3LatentImage", width=64, height=64, batch_size=1),
        "8": node("KSampler", seed=1, steps=2, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1,
                  model=["4", 0], positive=["5", 0], negative=["6", 0], latent_image=["7", 0]),
        "9": node("VAEDecode", samples=["8", 0], vae=["3", 0]),
        "10": node("SaveImage", images=["9", 0], filename_prefix="x"),
    }


def write(tmp_path: Path, data, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def refused(capsys, argv: list[str], code: int = 2) -> str:
    """Run the verb; it must return ``code`` with one line on stderr and nothing on stdout."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def t2i() -> dict:
    return json.loads((FIXTURES / "qwen_image_t2i.json").read_text())


def inner(wf: dict, node_id: int) -> dict:
    return next(n for n in wf["definitions"]["subgraphs"][0]["nodes"] if n["id"] == node_id)


# ----------------------------------------------------------------------------- fixtures are vendored
def test_vendored_fixtures_are_the_unmodified_upstream_files():
    text = (FIXTURES / "PROVENANCE.md").read_text()
    assert "License-Expression: MIT" in text and "Permission is hereby granted, free of charge" in text
    for name in ("qwen_image_t2i.json", "qwen_image_edit.json", "qwen_image_edit_2509.json"):
        digest = hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest()
        assert f"| {name} |" in text and digest in text, name


# ----------------------------------------------------------------------------- link cycles
def test_cycle_on_the_model_path_is_named(tmp_path, capsys):
    wf = api()
    wf["11"] = node("LoraLoaderModelOnly", model=["12", 0], lora_name="a.safetensors", strength_model=1)
    wf["12"] = node("LoraLoaderModelOnly", model=["11", 0], lora_name="b.safetensors", strength_model=1)
    wf["4"]["inputs"]["model"] = ["11", 0]
    err = refused(capsys, [str(write(tmp_path, wf))])
    assert ("the workflow's links form a cycle, which ComfyUI cannot run either: #11 LoraLoaderModelOnly takes "
            "'model' from #12 LoraLoaderModelOnly, which takes 'model' from #11 LoraLoaderModelOnly; remove one "
            "of these links") in err


def test_cycle_on_the_conditioning_path_is_named(tmp_path):
    wf = api()
    wf["13"] = node("ConditioningCombine", conditioning_1=["14", 0], conditioning_2=["5", 0])
    wf["14"] = node("ConditioningCombine", conditioning_1=["13", 0])
    wf["8"]["inputs"]["positive"] = ["13", 0]
    with pytest.raises(WorkflowError, match=r"cycle.*#13 ConditioningCombine takes 'conditioning_1' from #14 "
                                            r"ConditioningCombine, which takes 'conditioning_1' from #13"):
        import_workflow(write(tmp_path, wf))


def test_switch_feeding_itself_is_one_line_not_a_recursion_error(tmp_path):
    wf = api()
    wf["15"] = node("ComfySwitchNode", switch=["15", 0], on_true=["1", 0], on_false=["1", 0])
    wf["4"]["inputs"]["model"] = ["15", 0]
    path = write(tmp_path, wf)
    with pytest.raises(WorkflowError, match=r"#15 ComfySwitchNode takes 'switch' from #15 ComfySwitchNode;"):
        import_workflow(path)
    # the command itself returns at once (it used to hang or print 3,000 lines)
    proc = subprocess.run([sys.executable, "-m", "workbench", "import-comfy", str(path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "links form a cycle" in proc.stderr and "Traceback" not in proc.stderr


def test_cycle_in_a_ui_workflow_names_the_subgraph_nodes(tmp_path):
    wf = t2i()
    sg = wf["definitions"]["subgraphs"][0]
    lora = inner(wf, 73)  # LoraLoaderModelOnly; switch #78 takes its on_true from it
    link_id = next(i["link"] for i in lora["inputs"] if i["name"] == "model")
    link = next(x for x in sg["links"] if x["id"] == link_id)
    link["origin_id"], link["origin_slot"] = 78, 0  # the LoRA now reads the switch it feeds
    with pytest.raises(WorkflowError, match=r"cycle.*#76:78 ComfySwitchNode 'Switch \(Model\)' takes 'on_true' from "
                                            r"#76:73 LoraLoaderModelOnly, which takes 'model' from #76:78"):
        import_workflow(write(tmp_path, wf))


def test_subgraph_output_fed_back_into_its_own_input(tmp_path):
    # instance #100 of a pass-through subgraph (input 0 -> output 0) whose output feeds its own input
    wf = {
        "version": 0.4,
        "nodes": [
            {"id": 100, "type": "sg-pass", "mode": 0, "inputs": [{"name": "model", "type": "MODEL", "link": 1}],
             "outputs": [{"type": "MODEL"}]},
            {"id": 8, "type": "KSampler", "mode": 0, "inputs": [{"name": "model", "type": "MODEL", "link": 2}],
             "widgets_values": [1, "fixed", 2, 4.0, "euler", "simple", 1.0]},
        ],
        "links": [[1, 100, 0, 100, 0, "MODEL"], [2, 100, 0, 8, 0, "MODEL"]],
        "definitions": {"subgraphs": [{
            "id": "sg-pass", "name": "pass", "inputs": [{"name": "model"}], "nodes": [],
            "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 0}],
        }]},
    }
    with pytest.raises(WorkflowError, match=r"links through subgraph instance #100 form a cycle"):
        import_workflow(write(tmp_path, wf))


def test_resolver_refuses_a_cycle_it_is_handed_directly():
    # map_workflow checks cycles first; the resolver still refuses one rather than loop (defence in depth)
    nodes = flatten_api({"1": node("Reroute", x=["2", 0]), "2": node("Reroute", x=["1", 0])})
    with pytest.raises(WorkflowError, match=r"steps: the links form a cycle through #1 Reroute -> #2 Reroute -> "
                                            r"#1 Reroute"):
        Resolver(nodes, []).value(Link("1", 0), "steps")


def test_switch_chain_deeper_than_the_route_limit(tmp_path):
    # each switch's `switch` value comes from the next switch: nested reads, bounded before Python's stack is
    from workbench.comfy.resolve import MAX_ROUTE

    def chain(n: int) -> dict:
        wf = api()
        for i in range(n):
            nxt = ["b", 0] if i == n - 1 else [f"s{i + 1}", 0]
            wf[f"s{i}"] = node("ComfySwitchNode", switch=nxt, on_true=["t", 0], on_false=["t", 0])
        wf["b"], wf["t"] = node("PrimitiveBoolean", value=True), node("PrimitiveInt", value=1)  # a step count, and true
        wf["8"]["inputs"]["steps"] = ["s0", 0]
        return wf

    assert import_workflow(write(tmp_path, chain(MAX_ROUTE - 10))).steps == 1
    with pytest.raises(WorkflowError, match=rf"^wf\.json: #s{MAX_ROUTE - 1} ComfySwitchNode switch: more than "
                                            rf"{MAX_ROUTE} switch / reroute / bypassed nodes in a row \(MAX_ROUTE\), "
                                            rf"at #s{MAX_ROUTE} ComfySwitchNode$"):
        import_workflow(write(tmp_path, chain(MAX_ROUTE + 50)))


# ----------------------------------------------------------------------------- wrong value types
@pytest.mark.parametrize(("key", "value", "message"), [
    ("steps", "abc", r"#8 KSampler steps: expected an integer, found str 'abc'"),
    ("steps", 2.5, r"#8 KSampler steps: expected an integer, found float 2.5"),
    ("steps", True, r"#8 KSampler steps: expected an integer, found bool True"),
    ("cfg", [1, 2, 3], r"#8 KSampler cfg: expected a number, found list \[1, 2, 3\]"),
    ("seed", {"a": 1}, r"#8 KSampler seed: expected an integer, found dict \{'a': 1\}"),
    ("sampler_name", 7, r"#8 KSampler sampler_name: expected a string, found int 7"),
])
def test_wrong_value_types_name_node_input_and_expectation(tmp_path, key, value, message):
    wf = api()
    wf["8"]["inputs"][key] = value
    with pytest.raises(WorkflowError, match=r"^wf\.json: " + message + "$"):
        import_workflow(write(tmp_path, wf))


def test_wrong_string_and_structure_types(tmp_path, capsys):
    wf = api()
    wf["5"]["inputs"]["text"] = {"not": "a prompt"}
    assert "#5 CLIPTextEncode text: expected a string, found dict" in refused(capsys, [str(write(tmp_path, wf))])
    wf = api()
    wf["8"]["inputs"] = ["seed", 1]
    assert "node '8' (KSampler) inputs: expected an object {name: value}, found list" in refused(
        capsys, [str(write(tmp_path, wf))])
    ui = t2i()
    inner(ui, 3)["widgets_values"] = "abc"  # the KSampler's widget list as a string
    assert ("node #3 KSampler widgets_values: expected a list (or an object), found str 'abc'"
            in refused(capsys, [str(write(tmp_path, ui))]))
    ui = t2i()
    ui["nodes"].append(["not", "a", "node"])
    assert "workflow node: expected an object with an 'id' and a 'type' (string), found list" in refused(
        capsys, [str(write(tmp_path, ui))])
    ui = t2i()
    ui["links"].append([1, 2])
    assert "workflow link: expected [id, origin id, origin slot, target id, target slot, type], found list" in \
        refused(capsys, [str(write(tmp_path, ui))])


def test_numeric_strings_and_whole_floats_are_read_as_comfyui_does(tmp_path):
    wf = api()
    wf["8"]["inputs"].update(steps="8", cfg="2.5", seed=7.0)
    r = import_workflow(write(tmp_path, wf))
    assert (r.steps, r.cfg, r.seeds) == (8, 2.5, [7])


# ----------------------------------------------------------------------------- encodings and numbers
def test_non_utf8_file(tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(api(), ensure_ascii=False).replace("a fox", "un café").encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")
    err = refused(capsys, [str(path)])
    assert f"latin1.json is not UTF-8 text (byte 0xe9 at offset {offset}): ComfyUI saves workflows as UTF-8" in err
    path.write_text(json.dumps(api()), encoding="utf-16")
    assert "is not UTF-8 text (byte 0xff at offset 0)" in refused(capsys, [str(path)])
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(api()).encode())  # a UTF-8 BOM is fine
    assert import_workflow(path).prompts == ["a fox"]


def test_non_finite_and_oversized_numbers(tmp_path):
    text = json.dumps(api()).replace('"cfg": 4.0', '"cfg": NaN')
    with pytest.raises(WorkflowError, match=r"wf\.json: non-finite number NaN \(not JSON"):
        import_workflow(write(tmp_path, text))
    text = json.dumps(api()).replace('"cfg": 4.0', '"cfg": 1e999')
    with pytest.raises(WorkflowError, match=r"wf\.json: number 1e999 overflows a float"):
        import_workflow(write(tmp_path, text))
    text = json.dumps(api()).replace('"seed": 1', '"seed": ' + "9" * 5000)
    with pytest.raises(WorkflowError, match=r"wf\.json cannot be read as JSON: .*digits"):
        import_workflow(write(tmp_path, text))


# ----------------------------------------------------------------------------- runaway sizes
def test_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys):
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(50 * 2**20)  # 50 MiB (sparse): the size alone must refuse it
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    err = refused(capsys, [str(path)])
    assert f"huge.json is 50.0 MiB, over the {reader.MAX_BYTES // 2**20} MiB limit for a workflow file (MAX_BYTES)" \
        in err


def test_deeply_nested_json_names_the_depth_limit(tmp_path):
    path = write(tmp_path, "[" * 200_000 + "]" * 200_000)  # json.loads would raise RecursionError
    with pytest.raises(WorkflowError, match=r"nests 200000 levels deep, over the limit of 64 \(MAX_DEPTH"):
        import_workflow(path)
    # brackets inside strings do not count
    wf = api()
    assert reader.json_depth(json.dumps(wf).encode()) == 4  # {"8": {"inputs": {"model": ["4", 0]}}}
    wf["5"]["inputs"]["text"] = "[[[{{{" * 100 + ' \\" ]]'
    assert reader.json_depth(json.dumps(wf).encode()) == 4
    assert import_workflow(write(tmp_path, wf, "ok.json")).prompts == [wf["5"]["inputs"]["text"]]


def test_wide_workflows_name_the_node_limit(tmp_path):
    wf = api()
    wf.update({str(i): node("Note") for i in range(100, 100 + flatten.MAX_NODES)})
    with pytest.raises(WorkflowError, match=rf"{flatten.MAX_NODES + 10} nodes, over the limit of {flatten.MAX_NODES} "
                                            r"\(MAX_NODES\)"):
        import_workflow(write(tmp_path, wf))


def test_subgraph_fan_out_is_bounded(tmp_path):
    # each level holds 10 instances of the next: 10**6 nodes once expanded (a "billion laughs" graph)
    subgraphs = [{"id": f"L{d}", "name": f"L{d}", "links": [],
                  "nodes": [{"id": i, "type": f"L{d + 1}"} for i in range(10)]} for d in range(5)]
    subgraphs.append({"id": "L5", "name": "L5", "links": [], "nodes": [{"id": i, "type": "Note"} for i in range(10)]})
    wf = {"version": 0.4, "nodes": [{"id": 1, "type": "L0"}], "links": [], "definitions": {"subgraphs": subgraphs}}
    with pytest.raises(WorkflowError, match=rf"more than {flatten.MAX_NODES} nodes once subgraphs are expanded"):
        import_workflow(write(tmp_path, wf))
    for sg in subgraphs:  # the same fan-out of empty instances only: the instances count too
        sg["nodes"] = [] if sg["id"] == "L5" else sg["nodes"]
    with pytest.raises(WorkflowError, match=rf"more than {flatten.MAX_NODES} nodes once subgraphs are expanded"):
        import_workflow(write(tmp_path, wf))
    subgraphs = [{"id": "self", "name": "self", "links": [], "nodes": [{"id": 1, "type": "self"}]}]
    wf["definitions"]["subgraphs"], wf["nodes"][0]["type"] = subgraphs, "self"
    with pytest.raises(WorkflowError, match=r"subgraph 'self' is nested more than 16 levels deep"):
        import_workflow(write(tmp_path, wf))


# ----------------------------------------------------------------------------- PNGs
def png_with(tmp_path: Path, chunks: dict[str, str], name: str = "comfy.png") -> Path:
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_png_with_a_corrupt_workflow_chunk(tmp_path, capsys):
    err = refused(capsys, [str(png_with(tmp_path, {"workflow": '{"nodes": [{"id": 1,'}))])
    assert "comfy.png (PNG text chunk 'workflow') is not valid JSON" in err
    err = refused(capsys, [str(png_with(tmp_path, {"prompt": "[1, 2]"}))])
    assert "comfy.png (PNG text chunk 'prompt'): not a ComfyUI workflow" in err


def test_png_with_a_bad_checksum_or_truncated(tmp_path, capsys):
    path = png_with(tmp_path, {"workflow": json.dumps(t2i())})
    data = bytearray(path.read_bytes())
    at = data.index(b"tEXtworkflow")
    data[at + 40] ^= 0xFF  # flip a byte inside the chunk: its CRC no longer matches
    path.write_bytes(bytes(data))
    assert "comfy.png: the PNG is corrupt or truncated, its text chunks cannot be read" in refused(capsys, [str(path)])
    path.write_bytes(bytes(data[: at + 1000]))  # cut inside the chunk
    assert "comfy.png: the PNG is corrupt or truncated" in refused(capsys, [str(path)])


def test_png_with_an_oversized_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_BYTES", 1000)
    path = png_with(tmp_path, {"workflow": json.dumps(api()) + " " * 2000})
    with pytest.raises(WorkflowError, match=r"\(PNG text chunk 'workflow'\) is 0\.0 MiB, over the 0 MiB limit"):
        import_workflow(path)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_zip_bomb_chunk_is_refused_by_pil_limit(tmp_path, capsys):
    # a zTXt chunk that inflates past PIL's MAX_TEXT_CHUNK: PIL's limit stays on, we name the file
    path = png_with(tmp_path, {})
    data = path.read_bytes()
    bomb = _chunk(b"zTXt", b"workflow\x00\x00" + zlib.compress(b" " * (64 * 2**20), 9))
    at = data.index(b"IDAT") - 4
    path.write_bytes(data[:at] + bomb + data[at:])
    assert "comfy.png: the PNG is corrupt or truncated, its text chunks cannot be read (ValueError" in refused(
        capsys, [str(path)])


# ----------------------------------------------------------------------------- the input path
def test_input_that_is_a_folder_a_pipe_or_missing(tmp_path, capsys):
    assert f"{tmp_path} is a folder: give a workflow .json" in refused(capsys, [str(tmp_path)])
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # opening it would block forever
    assert f"{fifo} is not a regular file" in refused(capsys, [str(fifo)])
    assert "workflow file 'nope.json' not found" in refused(capsys, ["nope.json"])


# ----------------------------------------------------------------------------- the -o path
def test_output_is_a_folder_or_under_a_file(tmp_path, capsys):
    wf = str(write(tmp_path, api()))
    assert f"-o {tmp_path} is a folder: give a file name, e.g. {tmp_path / 'from_comfy.yaml'}" in refused(
        capsys, [wf, "-o", str(tmp_path)])
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    assert f"cannot write {blocker / 'x.yaml'}: {blocker} is a file, not a folder" in refused(
        capsys, [wf, "-o", str(blocker / "x.yaml")])
    assert f"cannot write {blocker / 'a' / 'b.yaml'}: {blocker} is a file" in refused(
        capsys, [wf, "-o", str(blocker / "a" / "b.yaml")])
    assert "expected a .yaml file name" in refused(capsys, [wf, "-o", str(tmp_path / "out.json")])
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["somefile", "wf.json"]


def test_output_path_is_checked_before_the_workflow_is_read(tmp_path, capsys):
    err = refused(capsys, [str(tmp_path / "missing.json"), "-o", str(tmp_path)])
    assert "is a folder" in err  # not "not found": the cheap check on -o comes first


def test_existing_output_needs_force(tmp_path, capsys):
    wf = str(write(tmp_path, api()))
    out = tmp_path / "exp.yaml"
    out.write_text("keep me\n")
    assert f"-o {out} exists: pass --force to replace it, or choose another name" in refused(
        capsys, [wf, "-o", str(out)])
    assert out.read_text() == "keep me\n"
    assert main([wf, "-o", str(out), "--force"]) == 0
    assert "prompts: [\"a fox\"]" in out.read_text()


def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    wf = str(write(tmp_path, api()))
    out = tmp_path / "exp.yaml"
    out.write_text("old\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    err = refused(capsys, [wf, "-o", str(out), "--force"], code=3)
    assert f"writing {out} failed (No space left on device); nothing was written, the existing file is unchanged" \
        in err
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "wf.json"]
    new = tmp_path / "sub" / "new.yaml"
    assert "no file was left" in refused(capsys, [wf, "-o", str(new)], code=3)
    assert not new.exists() and list(new.parent.iterdir()) == []


def test_written_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "exp.yaml"
        assert main([str(write(tmp_path, api())), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_workflow_text_cannot_inject_yaml_keys(tmp_path):
    from omegaconf import OmegaConf

    wf = api()
    wf["11"] = {"class_type": "PatchSageAttention", "inputs": {"model": ["1", 0]},
                "_meta": {"title": "x\nhydra:\n  run:\n    dir: /etc\u2028seeds: [666]"}}
    wf["4"]["inputs"]["model"] = ["11", 0]
    wf["5"]["inputs"]["text"] = "fox\u2028seeds: [666]"
    wf["2"]["inputs"]["type"] = "qwen\nseeds: [666]"
    out = tmp_path / "exp.yaml"
    assert main([str(write(tmp_path, wf)), "-o", str(out)]) == 0
    text = out.read_text()
    assert "not mapped: #11 PatchSageAttention 'x\\nhydra:\\n  run:\\n    dir: /etc\\u2028seeds: [666]'" in text
    loaded = OmegaConf.load(out)
    assert "hydra" not in loaded and loaded.seeds == [1] and loaded.prompts == ["fox\u2028seeds: [666]"]
