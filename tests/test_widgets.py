"""Panels and magics without a browser: drive them through their Python API, check widget state."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workbench.models.catalogue import available_models
from workbench.widgets import ModelPanel, SweepPanel, TemplatePanel

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ("height=32", "width=32")


# ----------------------------------------------------------------------------- sweep panel
def test_sweep_panel_plans_runs_fills_grid_and_compares(tmp_path):
    panel = SweepPanel(axes=[("sampler.steps", "2,3")], base=SMALL, out_dir=tmp_path)
    assert panel.plan_info.value == "2 cells (2)" and not panel.run_button.disabled

    panel.set_axis(1, "sampler.cfg", "1,0.5")  # invalid value: named, and nothing can run
    assert "axis Y (sampler.cfg) value 0.5: sampler.cfg must be &gt;= 1" in panel.plan_info.value
    assert panel.run_button.disabled
    panel.set_axis(1, "template", "qwen_t2i,chat")
    assert panel.plan_info.value.startswith("4 cells (2 x 2)") and not panel.run_button.disabled
    assert "template options: chat, qwen21, qwen_edit, qwen_edit_plus, qwen_t2i, raw" in panel.plan_info.value
    assert "sampler.steps options" not in panel.plan_info.value

    grids = []
    panel.results.grid.observe(lambda change: grids.append(bytes(change["new"])), names="png")
    result = panel.run()
    assert result is panel.result and result.stats["ran"] == 4
    assert len(grids) >= 4 and all(g.startswith(PNG) for g in grids)  # redrawn after every cell
    assert len(set(grids)) >= 4  # ...and each redraw shows more of the grid
    assert panel.progress.value == panel.progress.max == 4 and panel.progress.bar_style == "success"
    assert panel.status.value == "4 ran, 0 cached, 0 failed"
    for text in ('id="workbench-sweep-table"', ">sampler.steps</th>", ">template</th>", ">denoise (s)</th>", "chat"):
        assert text in panel.results.table.html
    # the clickable grid: one box per cell, where the grid image has that cell's tile
    layout = result.grid_layout
    assert panel.results.grid.tiles == [[i, *layout.tiles[i]] for i in range(4)] and panel.results.grid.size == list(layout.size)
    assert panel.results.grid.labels["2"] == "cell 2: steps=2, template=chat"

    assert [label for label, _ in panel.results.compare_a.options][:2] == ["0: steps=2, template=qwen_t2i", "1: steps=3, template=qwen_t2i"]
    assert bytes(panel.results.compare_image.value).startswith(PNG)
    assert "<td>sampler.steps</td><td>2</td><td>3</td>" in panel.results.compare_info.value
    panel.results.compare_b.value = 2  # A/B across the template axis
    assert "<td>template.name</td><td>qwen_t2i</td><td>chat</td>" in panel.results.compare_info.value
    panel.results.compare_zoom.value = False  # 1:1
    assert panel.results.compare_image.layout.max_width == "none"

    charts = Image.open(io.BytesIO(bytes(panel.results.charts.value)))
    assert charts.size == (800, 300) and panel.results.charts.layout.display is None

    panel.run()  # the same sweep again: every cell comes from the cache
    assert panel.status.value == "0 ran, 4 cached, 0 failed"
    assert repr(panel) == "SweepPanel(axes=['sampler.steps=2,3', 'template=qwen_t2i,chat'], base=['height=32', 'width=32'])"


def test_sweep_panel_tile_click_shows_the_cell_and_its_overrides(tmp_path):
    panel = SweepPanel(axes=[("sampler.steps", "2,3")], base=SMALL, out_dir=tmp_path)
    result = panel.run()
    panel.results.grid.click(1)  # what the browser sends when tile 1 is clicked
    assert panel.results.grid.selected == 1
    assert panel.results.detail_overrides.value == "height=32 width=32 sampler.steps=3" == panel.results.copy_button.text
    record = result.sweep.cell_dir(result.sweep.cells[1]) / "record.json"
    assert str(record) in panel.results.detail_info.value and record.is_file()
    assert "denoise (s)" in panel.results.detail_info.value
    shown = Image.open(io.BytesIO(bytes(panel.results.detail_image.value)))
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(result.cells[1].tile))  # full size, 1:1
    panel.results.grid._message(panel.results.grid, {"event": "click", "cell": 99}, [])  # a forged message: not a tile shown
    panel.results.grid._message(panel.results.grid, {"event": "click", "cell": "0"}, [])
    assert panel.results.grid.selected == 1

    paths = panel.results.save()  # the Save button: grid PNG and table CSV / Parquet, paths shown
    assert set(paths) == {"png", "csv", "parquet"} and all(p.is_file() for p in paths.values())
    assert all(str(p) in panel.results.saved.value for p in paths.values())
    assert Image.open(paths["png"]).size == result.grid.size


def test_sweep_panel_hides_empty_and_stale_results_and_blanks_pending_rows(tmp_path):
    """No broken-image icon before the first run, no old grid under new axes, no 'None' in pending rows."""
    panel = SweepPanel(axes=[("sampler.steps", "2,3")], base=SMALL, out_dir=tmp_path)
    assert panel.results.grid.png == b"" and panel.results.compare_image.layout.display == "none"
    assert panel.results.charts.layout.display == "none" and panel.results.detail_image.layout.display == "none"
    shown = []
    panel.results.table.observe(lambda change: shown.append(change["new"]), names="html")
    panel.run()
    assert panel.results.grid.png.startswith(PNG) and panel.results.compare_image.layout.display is None
    first = next(t for t in shown if t)  # the first redraw: one cell ran, one pending
    assert ">None<" not in first and ">nan<" not in first and "pending" in first
    panel.set_axis(0, "sampler.steps", "2,4")
    assert panel.results.grid.png == b"" and panel.results.table.html == "" and panel.results.compare_info.value == ""
    assert panel.results.compare_a.options == () and panel.results.save_button.disabled
    panel.run()
    assert panel.results.grid.png.startswith(PNG) and "<table" in panel.results.table.html


def test_sweep_panel_failed_cell_is_shown(tmp_path):
    panel = SweepPanel(axes=[("sampler", "flow_euler,lightning"), ("sampler.steps", "1,2")], base=SMALL, out_dir=tmp_path)
    assert "1 invalid combination(s) will be blank tiles" in panel.plan_info.value
    panel.run()
    assert panel.status.value == "3 ran, 0 cached, 1 failed" and panel.progress.bar_style == "danger"
    assert ">failed</td>" in panel.results.table.html
    failed = next(i for i, c in enumerate(panel.result.cells) if not c.images)
    choices = [i for _, i in panel.results.compare_a.options]  # a failed cell has nothing to compare: not offered
    assert failed not in choices and len(choices) == 3
    assert "PSNR" in panel.results.compare_info.value and "SSIM" in panel.results.compare_info.value
    panel.results.grid.click(failed)  # its tile still opens: the reason, no image
    assert "error" in panel.results.detail_info.value and panel.results.detail_image.layout.display == "none"


def test_sweep_panel_runs_in_the_background_stops_and_resumes(tmp_path):
    """The Run button starts a thread; Stop cuts the running cell between steps; Run again resumes from the
    cache. Progress, ETA and the x0 preview are shown while it runs."""
    panel = SweepPanel(axes=[("sampler.steps", "30,31,32")], base=SMALL, out_dir=tmp_path)
    seen = []
    panel.cell_text.observe(lambda change: seen.append(change["new"]), names="value")

    def stop_in_the_second_cell(change):
        if "cell 1:" in change["new"] and "denoise 3/" in change["new"]:
            panel.stop()

    panel.cell_text.observe(stop_in_the_second_cell, names="value")
    import workbench.widgets.sweep_panel as sp

    sp.PROGRESS_EVERY_S = 0.0  # every step redraws, so the stop lands at step 3
    try:
        assert panel.start() and panel.running and panel.run_button.disabled and not panel.stop_button.disabled
        result = panel.wait(120)
    finally:
        sp.PROGRESS_EVERY_S = 0.1
    assert result is not None and result.stopped and result.cut == 1, panel.status.value
    assert panel.status.value.startswith("stopped: 1 ran, 0 cached, 0 failed; cell 1 was cut")
    assert panel.progress.bar_style == "warning" and not panel.run_button.disabled and panel.stop_button.disabled
    assert any(t.startswith("cell 0: steps=30 (denoise ") for t in seen)
    assert panel.preview.layout.display is None and bytes(panel.preview.value).startswith(PNG)
    assert "cells" in panel.progress_text.value and "left" in panel.progress_text.value  # an ETA after a cell ran
    assert "stopped" in panel.results.table.html

    panel.cell_text.unobserve(stop_in_the_second_cell, names="value")
    assert panel.start()
    result = panel.wait(120)
    assert panel.status.value == "2 ran, 1 cached, 0 failed" and result.complete


def test_sweep_panel_shows_warnings_of_its_run(tmp_path):
    """A warning raised while the panel's sweep runs is listed in the panel (not only in Lab's log)."""
    panel = SweepPanel(axes=[("sampler.steps", "2,3")], base=SMALL, out_dir=tmp_path)
    panel.run()
    record = panel.result.sweep.cell_dir(panel.result.sweep.cells[0]) / "record.json"
    record.write_text("{ truncated")  # a damaged cache cell: computed again, with a CorruptCellWarning
    panel.set_axis(0, "sampler.steps", "2,3")
    with pytest.warns(UserWarning):
        panel.run()
    assert "CorruptCellWarning" in panel.warnings.value and "computing the cell again" in panel.warnings.value
    assert panel.status.value == "1 ran, 1 cached, 0 failed"


def test_sweep_panel_metric_columns(tmp_path):
    """Picking metrics in the panel replans with them; the table shows the scores the result holds."""
    base = ("prompts=['a small white square on the top, on a green background']",)
    panel = SweepPanel(axes=[("template", "qwen_t2i,raw")], base=base, out_dir=tmp_path)
    panel.metrics.value = ("adherence", "ssim")
    assert panel.sweep.metrics == ("adherence", "ssim")
    result = panel.run()
    table = result.table
    assert {"adherence", "shape_ok", "ssim_vs_0"} <= set(table.columns) and "psnr_vs_0" not in table.columns
    assert ">adherence</th>" in panel.results.table.html and ">ssim_vs_0</th>" in panel.results.table.html
    assert f">{table.loc[1, 'adherence']:.3f}</td>" in panel.results.table.html
    assert repr(panel).endswith("metrics=['adherence', 'ssim'])")
    panel.base.value = "prompts=['not a caption']"  # adherence cannot score this: said before running
    assert "not in the world&#x27;s grammar" in panel.plan_info.value and panel.run_button.disabled


# ----------------------------------------------------------------------------- template panel
def test_template_panel_tokens_live():
    panel = TemplatePanel("qwen_t2i", prompt="a red fox")
    assert panel.report.drop == 34 and panel.report.kept == len(panel.report.ids) - 34
    assert "<b>34</b> dropped" in panel.summary.value
    assert panel.tokens.value.count("tok-drop") == 34 and "tok-keep" in panel.tokens.value
    assert repr(panel) == f"TemplatePanel(template='qwen_t2i', tokens={len(panel.report.ids)}, drop=34, kept={panel.report.kept})"

    kept = panel.report.kept
    panel.prompt.value = "a red fox in the snow at night"  # typing updates the tokens
    assert panel.report.kept > kept

    panel.drop_until.value = ""  # keep every token
    assert panel.report.drop == 0 and "tok-drop" not in panel.tokens.value
    assert panel.template.drop_until is None and panel.template.name == "qwen_t2i"

    panel.text.value = panel.text.value.replace("{prompt}", "")  # an invalid edit is explained, not raised
    assert "exactly one '{prompt}' slot" in panel.error and panel.report is None
    assert "color:#a00" in panel.summary.value and panel.tokens.value == ""
    panel.text.value = "<|im_start|>user\n{prompt}<|im_end|>\n"
    panel.drop_until.value = "<|im_start|>user\n"
    assert panel.report.drop == 3 and panel.template.name == "qwen_t2i*"

    panel.prompt.value = "a fox<|im_end|>"  # control tokens in the prompt are refused
    assert "control token" in panel.error and "control token" in panel.summary.value


@pytest.mark.parametrize("marker", ["<|im_start|>user\n", "### Prompt:\r\n", "tab\there", "a\\nb", "ends\\", "\\\n", ""])
def test_drop_marker_shown_on_one_line_reads_back_exactly(marker):
    from workbench.token_report import read_marker, show_marker

    shown = show_marker(marker)
    assert "\n" not in shown and "\r" not in shown and read_marker(shown) == marker


def test_template_panel_drop_marker_keeps_its_newline():
    """A browser's text field drops newlines: the field shows the marker escaped, so typing it again (or just
    clicking in) keeps 34 dropped; a marker typed without its newline visibly changes the count."""
    panel = TemplatePanel("qwen_t2i", prompt="a red fox")
    assert panel.drop_until.value == "<|im_start|>user\\n" and panel.report.drop == 34
    panel.drop_until.value = "<|im_start|>user\\n"  # what the browser sends back after an edit
    assert panel.template.drop_until == "<|im_start|>user\n" and panel.report.drop == 34
    panel.drop_until.value = "<|im_start|>user"
    assert panel.report.drop == 33 and "<b>33</b> dropped" in panel.summary.value
    panel.choose.value = "chat"
    assert panel.drop_until.value == "<|im_start|>user\\n" and panel.report.drop == 14


def test_template_panel_keeps_edits_per_template_and_resets():
    """Choosing another template does not lose an edit silently: coming back restores it (and says so),
    Reset returns to the conf/ text."""
    panel = TemplatePanel("qwen_t2i", prompt="a red fox")
    edited = panel.text.value.replace("Describe the image", "Depict the image")
    assert edited != panel.text.value
    panel.text.value = edited
    assert "your edits of qwen_t2i" in panel.summary.value and panel.template.name == "qwen_t2i*"
    panel.choose.value = "chat"
    assert "your edits" not in panel.summary.value and panel.report.drop == 14
    panel.choose.value = "qwen_t2i"
    assert panel.text.value == edited and "your edits of qwen_t2i" in panel.summary.value
    panel.reset()
    assert panel.text.value == conf_text("qwen_t2i") and panel.template.name == "qwen_t2i"
    assert "your edits" not in panel.summary.value and panel.report.drop == 34
    panel.choose.value = "chat"
    panel.choose.value = "qwen_t2i"  # nothing kept after a reset
    assert panel.text.value == conf_text("qwen_t2i")
    assert "white-space:normal" in panel.tokens.value  # chips wrap inside the panel


def conf_text(name: str) -> str:
    from workbench.token_report import conf_template

    return conf_template(name).text


def test_template_panel_edit_template_shows_vision_tokens():
    panel = TemplatePanel("qwen_t2i", prompt="make it blue")
    panel.choose.value = "qwen_edit_plus"
    assert panel.images.value == 1 and panel.report.drop == 64
    assert len(panel.report.vision_tokens) == 1 and panel.report.vision_tokens[0] > 0
    assert "vision tokens per image" in panel.summary.value and "tok-vision" in panel.tokens.value
    panel.images.value = 2
    assert len(panel.report.vision_tokens) == 2
    panel.choose.value = "chat"  # back to text-only: no images, the chat prefix (14 tokens)
    assert panel.images.value == 0 and panel.report.drop == 14 and panel.report.vision_tokens == []


# ----------------------------------------------------------------------------- magics
@pytest.fixture()
def ip():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "workbench")
    return shell


def test_magics_run_and_sweep(ip, tmp_path):
    from IPython.core.error import UsageError

    from workbench.sweep import SweepResult

    res = ip.run_line_magic("workbench", f"run --out {tmp_path}/run sampler.steps=2 height=32 width=32 'prompts=[a red fox]'")
    assert repr(res) == (
        "RunResult(1 image(s), model tiny, precision fp32, template qwen_t2i, flow_euler 2 steps, cfg 1.0, seeds [0])"
    )
    assert res.images[0].size == (32, 32) and (tmp_path / "run" / "record.json").is_file()
    assert res._repr_mimebundle_()["image/png"].startswith(PNG)

    view = ip.run_line_magic("workbench", f"record {tmp_path}/run/record.json")
    assert "sampler.steps=2" in repr(view) and "<img src='data:image/png;base64," in view._repr_html_()

    sweep = ip.run_cell_magic(
        "workbench", f"sweep --out {tmp_path}/sweep --no-progress",
        "-x sampler.steps=2-3\n# a comment\nprompts=[a red fox, at night]\nheight=32\nwidth=32\n",
    )
    assert isinstance(sweep, SweepResult) and sweep.stats["ran"] == 2
    assert sweep.sweep.cells[0].config.prompts == ["a red fox", "at night"]
    assert sweep._repr_png_().startswith(PNG)

    with pytest.raises(UsageError, match=r"axis X \(sampler.steps\) value 0"):
        ip.run_line_magic("workbench", "sweep -x sampler.steps=0,2")
    with pytest.raises(UsageError, match="Key 'stepz' not in 'SamplerConfig'"):
        ip.run_line_magic("workbench", f"run --out {tmp_path}/bad sampler.stepz=2")
    with pytest.raises(UsageError, match="needs a verb"):
        ip.run_line_magic("workbench", "")
    with pytest.raises(UsageError, match=r"-x given twice \('sampler.steps=2,3', then 'seeds=1,2'\); one axis per "
                                         r"flag: -x, -y, -z"):  # argparse kept the last: one axis was lost
        ip.run_line_magic("workbench", "sweep -x sampler.steps=2,3 -x seeds=1,2")
    with pytest.raises(UsageError, match=r"--out given twice \('a', then 'b'\)$"):
        ip.run_line_magic("workbench", "run --out a --out b")
    assert isinstance(ip.run_line_magic("workbench", "panel template"), TemplatePanel)


def test_conditioning_rich_display(ip, bench, make_cfg):
    cfg = make_cfg()
    cond = bench.encode(cfg.prompts, cfg.template)
    html = ip.display_formatter.formatters["text/html"](cond)
    assert "Conditioning <b>qwen_t2i</b>" in html and "<th>norm_mean</th>" in html


# ----------------------------------------------------------------------------- model panel (frees models: last)
def test_model_panel_lists_tiny_models_loads_and_frees():
    assert "tiny" in available_models() and all(not m.startswith("files_") for m in available_models())
    panel = ModelPanel()
    assert panel.overrides()[:3] == ["model=tiny", "precision=fp32", "device=auto"]

    bench = panel.load()
    assert bench is panel.bench and panel.progress.value == 1 and panel.progress.bar_style == "success"
    assert panel.status.value.startswith("ready on cpu") and panel.resident >= 1
    assert "tiny — trained tiny Qwen-Image" in panel.resident_text() and "process RSS" in panel.info.value

    panel.precision.value = "fp8_torchao"  # needs a CUDA GPU: the panel says so and loads nothing
    assert panel.load() is None and panel.progress.bar_style == "danger"
    assert "PrecisionError" in panel.status.value and "fp8_torchao" in panel.status.value

    n = panel.free()
    assert n >= 1 and panel.resident == 0 and "no models resident" in panel.info.value
    assert panel.status.value == f"freed {n} resident model set(s)"


def test_model_panel_offers_discovered_models_and_loads_them(bench, make_cfg, tmp_path, monkeypatch):
    """The panel is a view over the model catalogue (tests/test_catalogue.py checks its content):
    its options and overrides are the catalogue's, and a files:... option loads the tiny model."""
    import dataclasses

    import torch

    from workbench.config import compose, to_run_config
    from workbench.loading.export import export_comfyui, export_diffusers
    from workbench.models.catalogue import catalogue
    from workbench.models.build import resident_models
    from workbench.pipeline import Workbench

    models = tmp_path / "models"
    names = export_comfyui(bench, models)
    export_diffusers(bench, models / "Qwen-Image-tiny")
    monkeypatch.setenv("WORKBENCH_MODELS", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    comfy, folder = f"files:{names['transformer']}", "files:Qwen-Image-tiny"
    offered = catalogue()

    panel = ModelPanel(model=comfy, device="cpu")
    assert [key for _, key in panel.model.options] == list(offered) and comfy in offered and folder in offered
    assert panel.model.label.startswith(f"{names['transformer']} (ComfyUI files, text-to-image) (≈ ")
    assert panel.overrides() == offered[comfy] + ["precision=fp32", "device=cpu", "precision.memory=all_on_device"]
    loaded = panel.load()
    assert loaded is not None and panel.progress.bar_style == "success", panel.status.value
    assert f"{names['transformer']} (ComfyUI files), fp32" in panel.resident_text() and "float32" in panel.resident_text()
    resident = {r["identity"]["transformer"].split("|")[0]: r for r in resident_models()}
    Workbench.from_config(make_cfg())  # resident again even if a test before freed it
    tiny = next(r for r in resident_models() if r["identity"] == bench.components.identity)
    assert resident[names["transformer"]]["bytes"] == tiny["bytes"]  # the same weights, now from files
    assert resident[names["transformer"]]["dtypes"] == {"text_encoder": "float32", "transformer": "float32", "vae": "float32"}
    cfg = to_run_config(compose(panel.overrides() + ["sampler.steps=2", "height=32", "width=32"]))
    ours = loaded.generate(cfg, progress=False)[0].latents
    ref = bench.generate(dataclasses.replace(cfg, model=make_cfg().model), progress=False)[0].latents
    assert torch.equal(ours, ref)

    panel.model.value = folder  # the diffusers folder: every part from it
    assert panel.overrides()[:len(offered[folder])] == offered[folder]
    assert isinstance(panel.load(), Workbench), panel.status.value
    assert panel.free() >= 2 and resident_models() == []


def test_model_panel_frees_one_resident_set_per_row():
    from workbench.models.build import free_models, resident_models

    free_models()
    panel = ModelPanel(model="tiny", device="cpu")
    assert panel.load() is not None
    panel.model.value = "tiny_random"
    assert panel.load() is panel.bench and panel.resident == 2 and len(panel.row_free_buttons) == 2
    rows = {r["model"]: r for r in resident_models()}
    panel.row_free_buttons[rows["tiny"]["key"]].click()
    assert [r["model"] for r in resident_models()] == ["tiny_random"] and panel.resident == 1
    assert panel.status.value.startswith("freed tiny — trained tiny Qwen-Image") and panel.bench is not None
    assert list(panel.row_free_buttons) == [rows["tiny_random"]["key"]]
    assert "tiny_random — tiny random Qwen-Image" in panel.resident_text() and "trained" not in panel.resident_text()
    panel.row_free_buttons[rows["tiny_random"]["key"]].click()
    assert resident_models() == [] and panel.bench is None and "no models resident" in panel.info.value


def test_model_panel_warns_what_cannot_fit_and_the_load_is_refused_alike(monkeypatch):
    from workbench.config import limits

    monkeypatch.setattr(limits, "available_memory", lambda device: (8 * 2**30, "CPU RAM"))
    panel = ModelPanel(device="cpu", precision="bf16", hf_cache=False)
    assert panel.fit.value == ""
    panel.model.value = "random_full"  # the warning shows as soon as the model changes
    assert "model=random_full: its weights need about" in panel.fit.value and "8.0 GiB free on CPU RAM" in panel.fit.value
    assert panel.model.label.endswith("does not fit CPU RAM") and not panel.load_button.disabled
    warned = panel.fit.value.split("&#9888; ")[1].split(";")[0]
    assert panel.load() is None and "ConfigError" in panel.status.value
    assert warned in panel.status.value  # the refusal names the same numbers
    panel.precision.value = "fp32"  # relabelled for the new precision; the chosen model stays
    assert panel.model.value == "random_full" and "(float32 / float32)" in panel.fit.value
    panel.model.value = "tiny"
    assert panel.fit.value == ""


def test_model_panel_writes_its_settings_into_a_sweep_base():
    sweep = SweepPanel(base=("height=32", "model=tiny", "width=32", "precision=fp32"))
    panel = ModelPanel(model="tiny_random", device="cpu", sweep=sweep)
    assert panel.sweep_button.layout.display == ""
    panel.sweep_button.click()
    assert sweep.base_overrides() == ["height=32", "width=32", *panel.overrides()]
    assert {c.config.model.name for c in sweep.sweep.cells} == {"tiny_random"} and sweep.sweep.cells[0].config.device == "cpu"
    assert sweep.plan_info.value.startswith("2 cells")
    other = SweepPanel(base=("width=32",))
    assert ModelPanel(model="tiny").use_as_sweep_base(other) == ["width=32", "model=tiny", "precision=fp32", "device=auto",
                                                                  "precision.memory=all_on_device"]
    with pytest.raises(ValueError, match="no SweepPanel"):
        ModelPanel().use_as_sweep_base()


def test_every_suggested_axis_key_is_a_key_or_group_of_the_config():
    """The panel's key suggestions name real keys (a typo there would plan a sweep that Hydra refuses)."""
    from omegaconf import OmegaConf

    from workbench.config import compose
    from workbench.config.build import options
    from workbench.widgets.sweep_panel import AXIS_KEYS

    cfg = compose([])
    for key in AXIS_KEYS:
        found = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False) != "<absent>"
        assert found or options(key), key
