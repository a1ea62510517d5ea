"""The build door (workbench/config/build.py): YAML and overrides become typed objects in one place.

Option lists, one-line errors, override quoting, the machine / file checks (run once, in the build
step, never in the dataclasses) and the top-level defaults living only in the ``Config`` dataclass.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from workbench.config import Config, ConfigError, build, compose, compose_many, to_run_config
from workbench.config.build import describe_error, options, override_value, record_config
from workbench.errors import EXIT_INPUT, exit_code

REPO = Path(__file__).resolve().parents[1]
GROUP_FIELDS = {name for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)}


# ----------------------------------------------------------------------------- option lists
def test_options_are_the_files_of_each_group():
    conf = build.config_dir()
    groups = [p.name for p in conf.iterdir() if p.is_dir() and any(p.glob("*.yaml"))]
    assert {"model", "template", "sampler", "lora", "precision", "reference", "perf", "accel", "executor",
            "experiment"} <= set(groups)
    for group in groups:
        assert options(group) == sorted(p.stem for p in (conf / group).glob("*.yaml")), group
    assert "qwen_t2i" in options("template") and "lightning_8step" in options("experiment")
    for name in options("template"):  # every option composes as group=option
        assert compose([f"template={name}"]).template.name == name
    with pytest.raises(ConfigError, match=r"no config group 'samplers'; groups: .*sampler"):
        options("samplers")


# ----------------------------------------------------------------------------- one-line errors
def _raw_hydra_error(overrides: list[str]) -> Exception:
    """The exception Hydra itself raises (what `workbench run` sees before our compose rewrites it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    build.register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(build.config_dir())):
        try:
            hydra_compose(config_name="config", overrides=overrides)
        except Exception as err:  # noqa: BLE001 - the error is what the test looks at
            return err
    raise AssertionError(f"{overrides} composed")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sampler.stepz=3"], ["unknown key sampler.stepz; did you mean sampler.steps?"]),
        (["sampler.steps=abc"], ["sampler.steps", "'abc'", "could not be converted to Integer"]),
        (["template=nope"], ["template/nope", "template options available: chat, qwen21, qwen_edit"]),
    ],
)
def test_describe_error_is_one_line_for_hydra_and_compose_errors(overrides, expected):
    for err in (_raw_hydra_error(overrides), pytest.raises(ConfigError, compose, overrides).value):
        line = describe_error(err)
        assert "\n" not in line and line.strip() == line, line
        assert all(part in line for part in expected), (type(err).__name__, line)
        assert "+sampler.stepz" not in line and "Config search path" not in line and "HYDRA_FULL_ERROR" not in line


def test_describe_error_for_omegaconf_and_workbench_errors():
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    with pytest.raises(OmegaConfBaseException) as info:
        OmegaConf.merge(OmegaConf.structured(Config), {"sampler": {"steps": "many"}})
    line = describe_error(info.value)
    assert "\n" not in line and "many" in line and "(key sampler.steps)" in line
    with pytest.raises(ConfigError) as info:
        to_run_config(compose(["sampler.steps=0"]))
    assert describe_error(info.value) == "sampler.steps must be >= 1, got 0"
    assert describe_error(ValueError("first\n  second")) == "first second"
    assert describe_error(KeyError()) == "KeyError"


# ----------------------------------------------------------------------------- override values
AWKWARD = [
    "a cat", "it's", "a\\b", "ends with a backslash\\", "${oc.env:HOME}", "\\${x}", "a, b", "[x]", "{a: b}",
    "null", "true", "8", "1e5", "nan", " leading space", "x=y", "quote\\'s", "new\nline", "tab\tx", "ünï 猫",
    "#hash", "a\\\\'", "", "'", "\\",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_override_value_round_trips_strings_through_compose(text):
    value = override_value(text)
    assert compose([f"negative_prompt={value}"]).negative_prompt == text
    assert list(compose([f"prompts=[{value}]"]).prompts) == [text]
    fast = compose_many([[f"negative_prompt={value}"]])[0]  # the sweep path applies values itself
    assert not isinstance(fast, Exception) and fast.negative_prompt == text


def test_override_value_of_numbers_bools_none_and_lists():
    assert override_value(8) == "8" and override_value(2.5) == "2.5" and override_value(None) == "null"
    assert override_value(True) == "true" and override_value("fox") == "fox"  # plain words stay bare
    cfg = compose([f"sampler.steps={override_value(8)}", f"sampler.cfg={override_value(2.5)}",
                   f"snap_size={override_value(True)}", f"init_image={override_value(None)}",
                   f"seeds={override_value([1, 2**64 - 1])}", f"prompts={override_value(('a, b', 'c'))}"])
    assert (cfg.sampler.steps, cfg.sampler.cfg, cfg.snap_size, cfg.init_image) == (8, 2.5, True, None)
    assert list(cfg.seeds) == [1, 2**64 - 1] and list(cfg.prompts) == ["a, b", "c"]


# ----------------------------------------------------------------------------- machine / file checks
def test_lora_files_are_checked_once_in_the_build_step(monkeypatch):
    import workbench.lora as lora

    calls = []
    real = lora.resolve_lora_file
    monkeypatch.setattr(lora, "resolve_lora_file", lambda file, roots=None: calls.append(file) or real(file, roots))
    cfg = compose(["lora.items=[{file: missing.safetensors}, {file: other.safetensors}]"])
    with pytest.raises(ConfigError) as info:
        to_run_config(cfg)
    message = str(info.value)
    assert message.startswith("lora.items[0].file: LoRA file 'missing.safetensors' not found; looked at: ")
    assert "\n" not in message and exit_code(info.value) == EXIT_INPUT
    assert calls == ["missing.safetensors"]  # the first missing file stops the check: resolved once

    # the dataclasses themselves never look at the disk: building them directly resolves nothing
    from omegaconf import OmegaConf

    calls.clear()
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, Config) and [i.file for i in typed.lora.items] == ["missing.safetensors", "other.safetensors"]
    assert calls == []


def test_lora_files_found_are_resolved_once_per_item(tmp_path, monkeypatch):
    import workbench.lora as lora

    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for f in files:
        f.write_bytes(b"")
    calls = []
    real = lora.resolve_lora_file
    monkeypatch.setattr(lora, "resolve_lora_file", lambda file, roots=None: calls.append(file) or real(file, roots))
    items = ", ".join(f"{{file: {override_value(str(f))}}}" for f in files)
    cfg = to_run_config(compose([f"lora.items=[{items}]", "sampler.steps=2"]))
    assert [i.file for i in cfg.lora.items] == [str(f) for f in files]
    assert calls == [str(f) for f in files]
    assert to_run_config(cfg) is cfg and len(calls) == 2  # a built Config is not checked again


def test_machine_checks_run_in_the_build_step_not_in_the_dataclass(tmp_path):
    missing = tmp_path / "nope.png"
    cfg = Config(template=to_run_config(compose()).template, images=[], init_image=str(missing), strength=0.5,
                 device="cuda:99")  # pure values: accepted
    assert cfg.device == "cuda:99"
    with pytest.raises(ConfigError, match="device=cuda:99 but this machine has no such device"):
        to_run_config(compose(["device=cuda:99"]))
    with pytest.raises(ConfigError, match=r"init_image '.*nope.png': file not found"):
        to_run_config(compose([f"init_image={override_value(str(missing))}", "strength=0.5"]))


# ----------------------------------------------------------------------------- defaults: one source
def test_top_level_defaults_live_only_in_the_config_dataclass(monkeypatch):
    from omegaconf import OmegaConf

    assert GROUP_FIELDS == {"model", "template", "sampler", "lora", "precision", "reference", "perf", "accel",
                            "executor"}
    own = [f for f in dataclasses.fields(Config) if f.name not in GROUP_FIELDS]
    assert {f.name for f in own} >= {"prompts", "seeds", "height", "width", "device", "negative_prompt"}
    yaml = OmegaConf.load(build.config_dir() / "config.yaml")
    assert set(yaml.keys()) == {"defaults", "hydra"}, "conf/config.yaml repeats a default of Config"
    # a default group option packaged _global_ may set a top-level key (model=tiny: its 64x64 training size)
    chosen = [next(iter(d.items())) for d in yaml.defaults if OmegaConf.is_dict(d) and "/" not in next(iter(d))]
    set_by_group = {}
    for group, option in chosen:
        file = build.config_dir() / group / f"{option}.yaml"
        if option is not None and file.read_text().startswith("# @package _global_"):
            set_by_group.update({k: v for k, v in OmegaConf.to_container(OmegaConf.load(file)).items()
                                 if k not in GROUP_FIELDS and k != "defaults"})
    assert set_by_group == {"height": 64, "width": 64}
    composed = OmegaConf.to_container(compose())
    for f in own:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert composed[f.name] == set_by_group.get(f.name, default), f.name
    # editing the dataclass default changes what composes
    field = Config.__dataclass_fields__["negative_prompt"]
    monkeypatch.setattr(field, "default", "blurry")
    assert compose().negative_prompt == "blurry"


# ----------------------------------------------------------------------------- layering
def test_config_modules_import_no_hydra_and_no_disk_machinery():
    code = (
        "import sys, workbench.config, workbench.config.run, workbench.config.template, workbench.loading.errors\n"
        "heavy = [m for m in ('hydra', 'omegaconf', 'torch', 'workbench.lora', 'workbench.templates',"
        " 'workbench.config.build', 'workbench.config.preflight') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_load_error_is_a_config_error_without_importing_the_config():
    from workbench.loading.errors import LoadError

    assert issubclass(LoadError, ConfigError)
    source = (REPO / "workbench" / "loading" / "errors.py").read_text()
    assert "workbench.config" not in source


# ----------------------------------------------------------------------------- records back into objects
def test_record_config_reads_a_resolved_config_back_as_literal_text(tmp_path):
    from omegaconf import OmegaConf

    prompt = "a fox ${oc.env:HOME} \\${x}"
    recorded = OmegaConf.to_container(compose([f"prompts=[{override_value(prompt)}]", "sampler.steps=3"]),
                                      resolve=True)
    del recorded["sampler"]["max_shift"]  # a record of an older schema: the nested key gets its default
    cfg, run_cfg, defaults = record_config(recorded, tmp_path / "record.json")
    assert run_cfg.prompts == [prompt] and cfg.prompts[0] == prompt and run_cfg.sampler.steps == 3
    assert defaults == [{"key": "sampler.max_shift", "default": 0.9}]
    recorded["sampler"]["steps"] = 0
    with pytest.raises(ConfigError, match=r"record.json: the recorded config is not valid here: sampler.steps must be >= 1"):
        record_config(recorded, tmp_path / "record.json")
    recorded["sampler"]["steps"] = "many"
    with pytest.raises(ConfigError, match=r"does not fit this version's schema \(key sampler.steps\)"):
        record_config(recorded, tmp_path / "record.json")


def test_group_options_as_data_and_objects():
    from workbench.config import TemplateConfig
    from workbench.config.build import group_config, option_data, resolved, to_object

    assert option_data("model", "files_comfyui")["source"] == "files"
    assert option_data("model", "tiny")["model"]["source"] == "tiny"  # packaged _global_: keys as written
    edit = group_config("template", "qwen_edit_plus")
    assert isinstance(edit, TemplateConfig) and edit.max_images > 0  # no reference images needed to inspect it
    tree = compose(["sampler.steps=3"])
    assert isinstance(to_object(tree), Config) and resolved(tree)["sampler"]["steps"] == 3
    with pytest.raises(ConfigError, match="sampler.steps must be >= 1"):
        to_object(compose(["sampler.steps=0"]))
    with pytest.raises(ConfigError, match=r"NOPE_UNSET_VARIABLE"):
        resolved(compose(["negative_prompt=${oc.env:NOPE_UNSET_VARIABLE}"]))
