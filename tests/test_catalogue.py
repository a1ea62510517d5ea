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


def test_catalogue_entries_read_their_descriptions_from_conf(exported, monkeypatch):
    """Labels come from conf/model/*.yaml (model.description) and the discovered files' path and variant;
    the dropdown's value stays the catalogue key."""
    from workbench.config import compose, to_run_config
    from workbench.config.build import option_data
    from workbench.models.catalogue import catalogue, catalogue_entries, model_labels

    tmp, models, names = exported
    monkeypatch.setenv("WORKBENCH_MODELS", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp / "empty-hub"))
    entries = catalogue_entries()
    assert {k: e.overrides for k, e in entries.items()} == catalogue()
    assert entries["random_full"].description == option_data("model", "random_full")["description"]
    assert to_run_config(compose(["model=tiny", "device=cpu"])).model.description == entries["tiny"].description
    assert entries["random_full"].parameters > 28e9 and entries["tiny"].parameters < 1e8
    comfy = f"files:{names['transformer']}"
    assert entries[comfy].description == f"{names['transformer']} (ComfyUI files, text-to-image)"
    assert entries["files:Qwen-Image-tiny"].description == "Qwen-Image-tiny (diffusers folder, text-to-image)"
    labels = dict((key, label) for label, key in model_labels(entries, "bf16", "cpu"))
    assert set(labels) == set(entries)
    assert labels["random_full"].startswith("random_full — full-size 20B DiT") and "GiB at bf16)" in labels["random_full"]
    assert labels["tiny"].startswith("tiny — trained tiny Qwen-Image") and "does not fit" not in labels["tiny"]


def test_fit_report_names_the_numbers_preflight_refuses_with(monkeypatch):
    """random_full on a device with 8 GiB free: the panel's warning and the load's refusal agree."""
    from workbench.config import compose, limits, to_run_config
    from workbench.errors import ConfigError
    from workbench.models.catalogue import catalogue_entries, fit_report, model_labels, weights_bytes

    from workbench.models import build

    monkeypatch.setattr(limits, "available_memory", lambda device: (8 * 2**30, "CPU RAM"))
    monkeypatch.setattr(build, "_CACHE", {})  # no resident build whose release would add room (other tests')
    monkeypatch.setenv("WORKBENCH_MODELS", "/nonexistent")
    entries = catalogue_entries(hf_cache=False)
    warning = fit_report(entries["random_full"], "bf16", "cpu")
    need = limits.fmt_bytes(weights_bytes(entries["random_full"], "bf16"))
    assert warning is not None and f"about {need} (bfloat16 / bfloat16)" in warning and "8.0 GiB free on CPU RAM" in warning
    assert "pick model=tiny" in warning and float(need.split()[0]) > 50
    with pytest.raises(ConfigError) as refused:
        to_run_config(compose(["model=random_full", "precision=bf16", "device=cpu"]))
    assert str(refused.value).split(";")[0] == warning.split(";")[0]  # the same numbers, the same words
    assert fit_report(entries["tiny"], "bf16", "cpu") is None
    fp32 = fit_report(entries["random_full"], "fp32", "cpu")
    assert f"about {limits.fmt_bytes(2 * weights_bytes(entries['random_full'], 'bf16'))} (float32 / float32)" in fp32
    labels = dict((key, label) for label, key in model_labels(entries, "bf16", "cpu"))
    assert labels["random_full"].endswith(" — does not fit CPU RAM") and not labels["tiny"].endswith("CPU RAM")
    # with a build resident, both count the memory a new build would release from it, in the same words
    tiny = to_run_config(compose(["height=64", "width=64"]))
    build.cached_components(tiny.model, tiny.precision, tiny.device, tiny.perf)
    warning = fit_report(entries["random_full"], "bf16", "cpu")
    with pytest.raises(ConfigError) as refused:
        to_run_config(compose(["model=random_full", "precision=bf16", "device=cpu"]))
    assert str(refused.value).split(";")[0] == warning.split(";")[0]
    assert "of other resident builds it would release)" in warning and "8.0 GiB free" not in warning


@pytest.mark.parametrize("base, new, keys, want", [
    (["height=64", "model=tiny", "width=64"], ["model=tiny_random", "device=cpu"], None,
     ["height=64", "width=64", "model=tiny_random", "device=cpu"]),
    (["", "  model.name=x ", "modelx=1", "+model.weights=asset:a", "~precision", "precision.memory=model_offload",
      "prompts=['model=tiny, device=cpu']", "devices=2", "  "],
     ["model=files_comfyui", "model.transformer='a b.safetensors'", "precision=bf16"], ("model", "precision", "device"),
     ["modelx=1", "prompts=['model=tiny, device=cpu']", "devices=2", "model=files_comfyui",
      "model.transformer='a b.safetensors'", "precision=bf16"]),
    (["# a note", "model@other=tiny", "sampler.steps=4"], ["model=tiny"], None, ["# a note", "sampler.steps=4", "model=tiny"]),
    ([], [" device=cpu ", ""], ("device",), ["device=cpu"]),
])
def test_merge_overrides_replaces_only_the_named_keys(base, new, keys, want):
    from workbench.config.overrides import merge_overrides, override_key

    assert merge_overrides(base, new, keys) == want
    assert [override_key(x) for x in ("++a.b=1", "~c", "d@e=f", " g = 'h=i'", "", "# j=k")] == ["a.b", "c", "d", "g", "", ""]


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
    report = token_report(template, args[-1], images, max_sequence_length=1024)  # the CLI's default limit
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
