"""``workbench import-comfy`` on the real ComfyUI workflow templates (UI format with subgraphs) and on
API-format and PNG variants derived from them.

Expected values were read by hand from the fixture files, following each KSampler input through the
links (subgraph input -10 -> instance input -> ..., Primitive nodes, ComfySwitchNode by the value of
its PrimitiveBoolean); the KSampler's own stored widget values are stale in all three files.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from workbench.cli.import_comfy import main
from workbench.comfy.graph import WorkflowError
from workbench.comfy.mapping import import_workflow
from workbench.comfy.writer import load_experiment
from workbench.config import compose, to_run_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfy_workflows"  # vendored, see PROVENANCE.md

T2I_PROMPT_START = '"A vibrant, warm neon-lit street scene in Hong Kong at the afternoon'
T2I_PROMPT_END = "And the background is warm yellow street and with all stores' lights on."
EDIT_PROMPT = ("Remove all UI text elements from the image. Keep the feeling that the characters and scene are in "
               "water. Also, remove the green UI elements at the bottom.")
EDIT_2509_PROMPT = "Replace the cat with a dalmatian, keeping the environment and scene consistent"
TE, VAE = "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image_vae.safetensors"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"qwen_image_{name}.json").read_text())


def subgraph_node(wf: dict, node_id: int) -> dict:
    return next(n for n in wf["definitions"]["subgraphs"][0]["nodes"] if n["id"] == node_id)


def validate(cfg):
    """to_run_config, ignoring only "not found" for model / LoRA files that exist on the ComfyUI machine."""
    from workbench.config import ConfigError

    try:
        return to_run_config(cfg)
    except ConfigError as err:
        assert "not found" in str(err) and ".safetensors" in str(err), err
        from omegaconf import OmegaConf

        items = OmegaConf.to_container(cfg.lora["items"], resolve=True)
        cfg.lora["items"] = []  # LoRA files are looked up at config time; the rest must validate
        run_cfg = to_run_config(cfg)
        run_cfg.lora.items = items  # what the YAML asked for, as plain dicts
        return run_cfg


def write(tmp_path: Path, wf: dict, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(wf))
    return path


# ----------------------------------------------------------------------------- the three templates
def test_t2i_follows_switches_not_stale_ksampler_widgets():
    r = import_workflow(FIXTURES / "qwen_image_t2i.json")
    assert (r.template, r.variant) == ("qwen_t2i", "t2i")  # positive = CLIPTextEncode #6 in subgraph 76
    # #6's text input comes from subgraph input "text"; the instance #76 leaves it unconnected, so the
    # inner widget value applies (682 characters, signs in Chinese and English).
    (prompt,) = r.prompts
    assert prompt.startswith(T2I_PROMPT_START) and prompt.endswith(T2I_PROMPT_END) and len(prompt) == 682
    assert "龍鳳冰室" in prompt and "\n" in prompt
    assert r.negative_prompt == ""  # CLIPTextEncode #7 widget ""
    assert (r.width, r.height) == (1328, 1328)  # EmptySD3LatentImage #58 widgets [1328, 1328, 1]
    assert r.seeds == [50347169638278]  # KSampler #3 seed widget (subgraph input "seed" unconnected outside)
    # PrimitiveBoolean #86 (enable_turbo_mode) = false: switch #82 -> PrimitiveInt #84 = 20 steps,
    # switch #83 -> PrimitiveFloat #85 = 4; the KSampler's stored [.., 8, 1, ..] are stale.
    assert (r.steps, r.cfg) == (20, 4.0)
    assert r.shift == 3.1  # ModelSamplingAuraFlow #66 widget 3.1000000000000005
    assert (r.sampler_name, r.scheduler) == ("euler", "simple")
    assert r.cfg_norm is None and r.loras == []  # switch #78 = false: UNETLoader #37 directly, LoRA #73 unused
    assert r.images == []
    assert r.models == {
        "diffusion_model": {"file": "qwen_image_fp8_e4m3fn.safetensors", "weight_dtype": "default"},
        "text_encoder": {"file": TE, "type": "qwen_image"},
        "vae": {"file": VAE},
    }
    assert "ignored: #76:73 LoraLoaderModelOnly does not feed the sampled image" in r.report
    assert "ignored: #76:79 PrimitiveInt 'Steps' does not feed the sampled image" in r.report
    assert "ignored: 4 note node(s) (documentation only)" in r.report


def test_edit_single_image():
    r = import_workflow(FIXTURES / "qwen_image_edit.json")
    assert (r.template, r.variant) == ("qwen_edit", "edit")  # TextEncodeQwenImageEdit #76 / #77
    assert r.prompts == [EDIT_PROMPT] and r.negative_prompt == ""
    # LoadImage #78 -> instance #102 input "image" -> subgraph input 0 -> #76 / #77 image and VAEEncode #88
    assert r.images == ["image_qwen_image_edit_input_image.png"]
    assert (r.width, r.height) == (None, None)  # latent = VAEEncode of the reference: its size
    assert r.seeds == [344147753686358]
    # PrimitiveBoolean #111 = false: steps from #106 (20), cfg from #107 (2.5); KSampler stores 4 / 1
    assert (r.steps, r.cfg, r.shift, r.cfg_norm) == (20, 2.5, 3.0, 1.0)  # AuraFlow #66 [3], CFGNorm #75 [1]
    assert r.loras == []  # switch #108 = false
    assert r.models["diffusion_model"]["file"] == "qwen_image_edit_fp8_e4m3fn.safetensors"
    assert r.models["text_encoder"]["file"] == TE and r.models["vae"]["file"] == VAE
    # ImageScaleToTotalPixels #93 hangs off the LoadImage but its output goes nowhere
    assert "ignored: #93 ImageScaleToTotalPixels does not feed the sampled image" in r.report
    assert "ignored: #102:89 LoraLoaderModelOnly does not feed the sampled image" in r.report


def test_edit_2509_turbo_switch_on_selects_lora_and_4_steps():
    r = import_workflow(FIXTURES / "qwen_image_edit_2509.json")
    assert (r.template, r.variant) == ("qwen_edit_plus", "edit_2509")  # TextEncodeQwenImageEditPlus
    assert r.prompts == [EDIT_2509_PROMPT] and r.negative_prompt == ""  # #111 / #110 widgets
    # image1 <- FluxKontextImageScale #117 <- subgraph input "image" <- LoadImage #78; image2/3 unconnected
    assert r.images == ["image_qwen_image_edit_2509_input_image.png"]
    assert r.seeds == [362225868152841]
    # PrimitiveBoolean #443 = true: steps #436 (4), cfg #437 (1), model through LoRA #89
    assert (r.steps, r.cfg, r.shift, r.cfg_norm) == (4, 1.0, 3.0, 1.0)
    assert r.loras == [{"file": "Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors", "strength": 1.0}]
    assert r.models["diffusion_model"]["file"] == "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
    assert ("not mapped: #433:117 FluxKontextImageScale: transforms a reference image; our reference.* "
            "settings size the references") in r.report


# ----------------------------------------------------------------------------- the YAML composes
@pytest.mark.parametrize(
    ("name", "template", "steps", "cfg", "shift", "size", "images"),
    [
        ("t2i", "qwen_t2i", 20, 4.0, 3.1, (1328, 1328), []),
        ("edit", "qwen_edit", 20, 2.5, 3.0, (None, None), ["image_qwen_image_edit_input_image.png"]),
        ("edit_2509", "qwen_edit_plus", 4, 1.0, 3.0, (None, None), ["image_qwen_image_edit_2509_input_image.png"]),
    ],
)
def test_written_yaml_composes_and_validates(tmp_path, capsys, monkeypatch, name, template, steps, cfg, shift, size, images):
    from PIL import Image

    out = tmp_path / "experiment" / f"{name}.yaml"
    monkeypatch.chdir(tmp_path)  # the workflow's input images, by their ComfyUI names: checked at config time
    for image in images:
        Image.new("RGB", (64, 48)).save(tmp_path / image)
    assert main([str(FIXTURES / f"qwen_image_{name}.json"), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# @package _global_\n") and "# Import report:" in text
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "experiment=" + name in err
    run_cfg = validate(compose(load_experiment(out)))
    assert run_cfg.template.name == template
    assert (run_cfg.sampler.steps, run_cfg.sampler.cfg, run_cfg.sampler.shift) == (steps, cfg, shift)
    assert run_cfg.sampler.shift_mode.value == "fixed" and run_cfg.sampler.shift_terminal is None
    assert (run_cfg.width, run_cfg.height) == size and run_cfg.images == images
    assert run_cfg.negative_prompt == ""
    assert run_cfg.sampler.guidance.value == ("cfg" if name == "t2i" else "cfg_norm")
    if name != "t2i":
        assert run_cfg.sampler.cfg_norm_strength == 1.0
    unet = {"t2i": "qwen_image_fp8_e4m3fn.safetensors", "edit": "qwen_image_edit_fp8_e4m3fn.safetensors",
            "edit_2509": "qwen_image_edit_2509_fp8_e4m3fn.safetensors"}[name]
    assert run_cfg.model.transformer == unet and run_cfg.model.source.value == "files"
    lora = "Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors"
    if name == "edit_2509":
        assert [(x["file"], x["strength"]) for x in run_cfg.lora.items] == [(lora, 1.0)]  # validate(): items as dicts
    else:
        assert "lora:" not in text  # the Lightning LoRA sits on the switch branch that is off


def test_yaml_outside_an_experiment_folder_composes(tmp_path):
    out = tmp_path / "t2i_import.yaml"
    assert main([str(FIXTURES / "qwen_image_t2i.json"), "-o", str(out)]) == 0
    run_cfg = to_run_config(compose(load_experiment(out)))
    assert run_cfg.prompts[0].startswith(T2I_PROMPT_START) and run_cfg.seeds == [50347169638278]


# ----------------------------------------------------------------------------- graph semantics
def test_switch_flipped_on_takes_lightning_branch(tmp_path):
    wf = fixture("t2i")
    subgraph_node(wf, 86)["widgets_values"] = [True]  # enable_turbo_mode
    r = import_workflow(write(tmp_path, wf))
    # switch #82 -> PrimitiveInt #79 (8), switch #83 -> PrimitiveFloat #81 (1), switch #78 -> LoRA #73
    assert (r.steps, r.cfg) == (8, 1.0)
    assert r.loras == [{"file": "Qwen-Image-Lightning-8steps-V1.0.safetensors", "strength": 1.0}]


def test_bypassed_lora_passes_its_model_through(tmp_path):
    wf = fixture("t2i")
    subgraph_node(wf, 86)["widgets_values"] = [True]
    subgraph_node(wf, 73)["mode"] = 4  # bypass the LoRA loader
    r = import_workflow(write(tmp_path, wf))
    assert r.loras == [] and r.models["diffusion_model"]["file"] == "qwen_image_fp8_e4m3fn.safetensors"
    assert "bypassed node #76:73 LoraLoaderModelOnly: its input passes through" in r.report
    assert (r.steps, r.cfg) == (8, 1.0)


def test_muted_node_on_the_path_is_reported(tmp_path):
    wf = fixture("t2i")
    subgraph_node(wf, 66)["mode"] = 2  # mute ModelSamplingAuraFlow
    r = import_workflow(write(tmp_path, wf))
    assert r.shift is None
    assert ("#76:3 KSampler model comes from muted node #76:66 ModelSamplingAuraFlow: ComfyUI would not run "
            "this workflow") in r.report


def test_muted_node_off_the_path_is_listed(tmp_path):
    wf = fixture("edit")
    next(n for n in wf["nodes"] if n["id"] == 93)["mode"] = 2
    r = import_workflow(write(tmp_path, wf))
    assert "ignored: #93 ImageScaleToTotalPixels (muted) does not feed the sampled image" in r.report
    assert r.images == ["image_qwen_image_edit_input_image.png"]


# ----------------------------------------------------------------------------- API format and PNG
def api_t2i(turbo: bool = False) -> dict:
    """The t2i template as ComfyUI's API export writes it: subgraph nodes flattened to "76:<id>"."""
    t2i = fixture("t2i")
    text = subgraph_node(t2i, 6)["widgets_values"][0]
    node = lambda t, **inputs: {"class_type": t, "inputs": inputs, "_meta": {"title": t}}  # noqa: E731
    return {
        "76:37": node("UNETLoader", unet_name="qwen_image_fp8_e4m3fn.safetensors", weight_dtype="default"),
        "76:38": node("CLIPLoader", clip_name=TE, type="qwen_image", device="default"),
        "76:39": node("VAELoader", vae_name=VAE),
        "76:73": node("LoraLoaderModelOnly", model=["76:37", 0], lora_name="Qwen-Image-Lightning-8steps-V1.0.safetensors",
                      strength_model=1),
        "76:86": node("PrimitiveBoolean", value=turbo),
        "76:78": node("ComfySwitchNode", on_false=["76:37", 0], on_true=["76:73", 0], switch=["76:86", 0]),
        "76:66": node("ModelSamplingAuraFlow", model=["76:78", 0], shift=3.1000000000000005),
        "76:84": node("PrimitiveInt", value=20),
        "76:79": node("PrimitiveInt", value=8),
        "76:82": node("ComfySwitchNode", on_false=["76:84", 0], on_true=["76:79", 0], switch=["76:86", 0]),
        "76:85": node("PrimitiveFloat", value=4),
        "76:81": node("PrimitiveFloat", value=1),
        "76:83": node("ComfySwitchNode", on_false=["76:85", 0], on_true=["76:81", 0], switch=["76:86", 0]),
        "76:6": node("CLIPTextEncode", text=text, clip=["76:38", 0]),
        "76:7": node("CLIPTextEncode", text="", clip=["76:38", 0]),
        "76:58": node("EmptySD3LatentImage", width=1328, height=1328, batch_size=1),
        "76:3": node("KSampler", seed=50347169638278, steps=["76:82", 0], cfg=["76:83", 0], sampler_name="euler",
                     scheduler="simple", denoise=1, model=["76:66", 0], positive=["76:6", 0], negative=["76:7", 0],
                     latent_image=["76:58", 0]),
        "76:8": node("VAEDecode", samples=["76:3", 0], vae=["76:39", 0]),
        "60": node("SaveImage", filename_prefix="Qwen-Image", images=["76:8", 0]),
    }


FIELDS = ("template", "variant", "prompts", "negative_prompt", "images", "width", "height", "seeds", "steps", "cfg",
          "shift", "cfg_norm", "loras", "models", "sampler_name", "scheduler")


def test_api_format_matches_the_ui_import(tmp_path):
    ui = import_workflow(FIXTURES / "qwen_image_t2i.json")
    api = import_workflow(write(tmp_path, api_t2i()))
    assert "ComfyUI API workflow" in api.source
    assert {f: getattr(api, f) for f in FIELDS} == {f: getattr(ui, f) for f in FIELDS}
    turbo = import_workflow(write(tmp_path, api_t2i(turbo=True), "turbo.json"))
    assert (turbo.steps, turbo.cfg) == (8, 1.0) and turbo.loras[0]["file"] == "Qwen-Image-Lightning-8steps-V1.0.safetensors"


def test_unmatched_sampler_and_unknown_nodes_are_reported(tmp_path):
    wf = api_t2i()
    wf["76:3"]["inputs"].update(sampler_name="res_multistep", scheduler="beta")
    wf["90"] = {"class_type": "PatchSageAttention", "inputs": {"model": ["76:78", 0], "sage_attention": "auto"}}
    wf["76:66"]["inputs"]["model"] = ["90", 0]
    wf["76:6"]["inputs"]["text"] = 'a "quoted" ${not.an.interpolation}\nsecond line'
    wf["91"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["76:6", 0]}}
    wf["76:3"]["inputs"]["negative"] = ["91", 0]
    path = write(tmp_path, wf)
    r = import_workflow(path)
    assert ("#76:3 KSampler sampler 'res_multistep' / scheduler 'beta': no exact workbench match (ours is euler / "
            "simple); imported as sampler.scheduler=euler with a fixed shift") in r.report
    assert "not mapped: #90 PatchSageAttention: on the model path: no workbench equivalent" in r.report
    # a zeroed negative must not pick up the positive prompt it was made from
    assert r.negative_prompt == "" and "ignored: #76:7 CLIPTextEncode does not feed the sampled image" in r.report
    assert ("not mapped: #91 ConditioningZeroOut: zeroed conditioning has no prompt equivalent; imported the "
            "prompt ''") in r.report
    out = tmp_path / "experiment" / "odd.yaml"
    assert main([str(path), "-o", str(out)]) == 0
    assert "#   - not mapped: #90 PatchSageAttention" in out.read_text()  # the report is in the YAML too
    run_cfg = to_run_config(compose(load_experiment(out)))
    assert run_cfg.prompts == ['a "quoted" ${not.an.interpolation}\nsecond line']  # kept literally


def png_with(tmp_path: Path, chunks: dict[str, str], name: str = "comfy.png") -> Path:
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    path = tmp_path / name
    Image.new("RGB", (16, 16), (40, 80, 120)).save(path, pnginfo=info)
    return path


def test_png_with_workflow_chunk(tmp_path):
    ui = import_workflow(FIXTURES / "qwen_image_edit_2509.json")
    r = import_workflow(png_with(tmp_path, {"workflow": json.dumps(fixture("edit_2509"))}))
    assert "PNG text chunk 'workflow'" in r.source
    assert {f: getattr(r, f) for f in FIELDS} == {f: getattr(ui, f) for f in FIELDS}


def test_png_prefers_the_executed_prompt_chunk(tmp_path):
    # SaveImage writes both; `prompt` is what ran (here: the turbo branch), `workflow` the editable graph
    path = png_with(tmp_path, {"prompt": json.dumps(api_t2i(turbo=True)), "workflow": json.dumps(fixture("t2i"))})
    r = import_workflow(path)
    assert "PNG text chunk 'prompt'" in r.source and (r.steps, r.cfg) == (8, 1.0)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys):
    assert main([str(png_with(tmp_path, {}, "plain.png"))]) == 2
    assert "has no ComfyUI 'prompt' or 'workflow' text chunk" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{not json")
    assert main([str(tmp_path / "x.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    wf = copy.deepcopy(fixture("t2i"))
    subgraph_node(wf, 3)["mode"] = 2  # mute the only KSampler
    assert main([str(write(tmp_path, wf))]) == 2
    assert "no active KSampler / KSamplerAdvanced node: nothing to import" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        import_workflow(write(tmp_path, {"hello": 1}, "other.json"))


def test_cli_prints_yaml_and_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench", "import-comfy", str(FIXTURES / "qwen_image_edit.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# @package _global_") and "  - override /template: qwen_edit\n" in proc.stdout
    assert "import report for qwen_image_edit.json" in proc.stderr


def test_comfy_sampler_names_map_onto_our_schedulers():
    from workbench.comfy.node_types import SCHEDULER_KINDS
    from workbench.config import SchedulerKind

    assert set(SCHEDULER_KINDS.values()) <= {k.value for k in SchedulerKind}


def test_a_2512_unet_makes_the_t2i_variant_t2i_2512(tmp_path):
    """Qwen-Image-2512 is the t2i architecture under its own name (as `workbench models` lists its files)."""
    text = (FIXTURES / "qwen_image_t2i.json").read_text().replace("qwen_image_fp8_e4m3fn.safetensors", "qwen_image_2512_bf16.safetensors")
    r = import_workflow(write(tmp_path, json.loads(text)))
    assert (r.template, r.variant) == ("qwen_t2i", "t2i_2512")
    assert r.models["diffusion_model"]["file"] == "qwen_image_2512_bf16.safetensors"
