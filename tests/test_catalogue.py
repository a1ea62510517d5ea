"""The library behind the face, without a browser: the model catalogue (what the model panel offers),
the token report (what ``workbench tokens`` prints and the template panel shows), and the layering
rule that widgets are views (no torch)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

WORKBENCH = Path(__file__).resolve().parents[1] / "workbench"


# ----------------------------------------------------------------------------- model catalogue
def test_catalogue_lists_the_configured_tiny_models(monkeypatch, tmp_path):
    from workbench.models.catalogue import available_models, catalogue, configured_models

    monkeypatch.setenv("WORKBENCH_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    configured = configured_models()
    assert {"tiny", "tiny_random"} <= set(configured) and not any(m.startswith("files") for m in configured)
    assert configured["tiny"] == ["model=tiny"]
    assert catalogue() == configured and available_models() == list(configured)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model written in ComfyUI and diffusers layouts under a models root, plus a lone transformer."""
    from workbench.config import compose, to_run_config
    from workbench.loading.export import export_comfyui, export_diffusers, write_transformer
    from workbench.pipeline import Workbench

    tmp = tmp_path_factory.mktemp("catalogue")
    bench = Workbench.from_config(to_run_config(compose(["model=tiny_random", "device=cpu"])))
    models = tmp / "models"
    names = export_comfyui(bench, models)
    export_diffusers(bench, models / "Qwen-Image-tiny")
    (tmp / "lonely").mkdir()
    write_transformer(bench.components.transformer, tmp / "lonely/qwen_image.safetensors")  # no encoder / VAE
    return tmp, models, names


def test_catalogue_lists_discovered_models_with_the_overrides_that_load_them(exported, monkeypatch):
    from workbench.config import compose, override_value, to_run_config
    from workbench.models.catalogue import available_models, catalogue, configured_models, discovered_models

    tmp, models, names = exported
    monkeypatch.setenv("WORKBENCH_MODELS", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp / "empty-hub"))
    comfy, folder = f"files:{names['transformer']}", "files:Qwen-Image-tiny"
    found = catalogue()
    assert list(found) == list(configured_models()) + [folder, comfy] == available_models()
    assert found[comfy] == [  # the file beside it, not the diffusers folder's parts; head size 16: tiny rules
        "model=files_comfyui", "model.variant=t2i", "model.arch_rules=tiny",
        f"model.transformer={override_value(names['transformer'])}",
        f"model.text_encoder={override_value(names['text_encoder'])}", f"model.vae={override_value(names['vae'])}",
    ]
    assert to_run_config(compose(found[comfy] + [f"model.roots=[{models}]"])).model.transformer == names["transformer"]
    assert found[folder] == ["model=files_diffusers", "model.variant=t2i", "model.transformer=Qwen-Image-tiny",
                             "model.text_encoder=Qwen-Image-tiny", "model.vae=Qwen-Image-tiny"]
    explicit = discovered_models([str(models)], hf_cache=False)[folder]  # roots given: carried in the overrides
    assert explicit[1] == f"model.roots=[{override_value(str(models))}]"
    assert to_run_config(compose(explicit)).model.roots == [str(models)]
    assert discovered_models([str(tmp / "lonely")], hf_cache=False) == {}  # incomplete: not offered


def test_arch_rules_follow_the_families_head_size():
    from workbench.loading.infer import arch_rules_for
    from workbench.models import arch

    assert arch_rules_for({"transformer_blocks.0.attn.norm_q.weight": (sum(arch.ROPE_AXES),)}) == "real"
    assert arch_rules_for({"transformer_blocks.0.attn.norm_q.weight": (16,)}) == "tiny"


def test_choices_and_memory_report():
    from workbench.models.build import resident_models
    from workbench.models.catalogue import available_devices, available_memory_modes, available_precisions, memory_report

    assert {"fp32", "bf16"} <= set(available_precisions())
    assert available_memory_modes()[0] == "all_on_device"
    assert available_devices()[:2] == ["auto", "cpu"]
    report = memory_report()
    assert report["resident"] == resident_models() and report["process_rss_bytes"] > 0


def test_exported_scheduler_is_the_flow_euler_samplers():
    """export_diffusers writes the family's scheduler config (models.arch), which is sampler=flow_euler's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from workbench.config import SamplerConfig
    from workbench.models.arch import SCHEDULER_CONFIG
    from workbench.stages.schedule import make_scheduler

    assert dict(FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).config) == dict(make_scheduler(SamplerConfig()).config)


# ----------------------------------------------------------------------------- token report
@pytest.mark.parametrize("args", [["a red fox"], ["--template", "qwen_edit_plus", "--image", "asset:sample_reference.png",
                                                  "make it blue"]])
def test_token_report_is_what_workbench_tokens_prints(args, capsys):
    from workbench.cli import main
    from workbench.config import compose, to_run_config
    from workbench.pipeline import load_image
    from workbench.token_report import token_report

    images = [load_image(a) for a in args if a.startswith("asset:")]
    overrides = [f"template={args[1]}", f"images={['asset:sample_reference.png']!r}", "height=null",
                 "width=null"] if images else []
    template = to_run_config(compose(overrides)).template
    report = token_report(template, args[-1], images)
    assert main(["tokens", *args]) == 0
    assert capsys.readouterr().out == "\n".join(report.lines()) + "\n"
    assert main(["tokens", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out) == report.as_dict()
    assert bool(report.vision_tokens) == bool(images)


def test_template_panel_shows_the_token_report():
    from workbench.token_report import conf_template, inspect_template, sample_images, token_report
    from workbench.widgets import TemplatePanel

    panel = TemplatePanel("qwen_edit_plus", prompt="make it blue", images=2)
    assert panel.report == token_report(conf_template("qwen_edit_plus"), "make it blue", sample_images(2))
    assert panel.report == inspect_template(conf_template("qwen_edit_plus"), "make it blue", 2)


# ----------------------------------------------------------------------------- layering
def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_widgets_import_no_torch():
    """Widgets are views: the compute (and torch) lives in the library functions they call."""
    files = sorted((WORKBENCH / "widgets").glob("*.py"))
    assert files
    for path in files:
        heavy = {m for m in _imports(path) if m.split(".")[0] in ("torch", "diffusers", "transformers")}
        assert not heavy, f"{path.name} imports {sorted(heavy)}"


@pytest.mark.parametrize("part, forbidden", [
    ("models", ("workbench.stages", "workbench.cli", "workbench.magics", "workbench.widgets")),
    ("stages", ("workbench.cli", "workbench.magics", "workbench.widgets")),
])
def test_models_and_stages_never_import_the_face(part, forbidden):
    for path in sorted((WORKBENCH / part).glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(forbidden)}
        assert not bad, f"{part}/{path.name} imports {sorted(bad)}"
