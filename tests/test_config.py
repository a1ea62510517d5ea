"""Bad config input fails early with a message naming the key and what is allowed."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from workbench.config import ConfigError, compose, to_run_config


def test_default_config_composes_to_typed_objects():
    cfg = to_run_config(compose())
    assert cfg.model.name == "tiny" and cfg.template.name == "qwen_t2i"
    assert cfg.sampler.steps == 20 and cfg.sampler.shift_terminal == 0.02
    assert cfg.height == cfg.width == 64  # the trained tiny model's size (conf/model/tiny.yaml)


def test_unknown_key():
    # one line with a suggestion instead of Hydra's "+sampler.stepz=3" hint; still a Hydra
    # ConfigCompositionException, with OmegaConf's original error as the cause
    with pytest.raises(ConfigCompositionException, match=r"^unknown key sampler\.stepz; did you mean sampler\.steps\?$") as err:
        compose(["sampler.stepz=3"])
    assert isinstance(err.value, ConfigError)
    assert "Key 'stepz' not in 'SamplerConfig'" in str(err.value.__cause__)


def test_wrong_type():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["sampler.steps=abc"])
    cause = err.value.__cause__
    assert isinstance(cause, ValidationError)
    assert "Value 'abc' of type 'str' could not be converted to Integer" in str(cause)
    assert "full_key: sampler.steps" in str(cause)


def test_wrong_enum_value_lists_allowed():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["precision.transformer=int8"])
    assert "Invalid value 'int8', expected one of [float32, bfloat16, float16]" in str(err.value.__cause__)


def test_unknown_template_lists_options():
    with pytest.raises(Exception) as err:
        compose(["template=qwen_t2x"])
    msg = str(err.value)
    assert "Could not find 'template/qwen_t2x'" in msg
    for name in ("qwen_t2i", "qwen_edit", "qwen_edit_plus", "chat", "raw"):
        assert name in msg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompts=[' ']"], r"prompts\[0\] is empty"),
        (["prompts=[]"], "prompts is empty"),
        (["height=100"], "height=100 is not a positive multiple of 16 .* use 96 or 112"),
        (["width=8"], "width=8 is not a positive multiple of 16"),
        (["sampler.steps=0"], "sampler.steps must be >= 1, got 0"),
        (["sampler.steps=1"], "steps=1 with shift_terminal set gives NaN"),
        (["sampler.cfg=0.5"], "sampler.cfg must be >= 1"),
        (["seeds=[]"], "seeds is empty"),
        (["template=qwen_edit"], "template 'qwen_edit' takes 1 reference image.* images has 0"),
        (["images=[x.png]"], "template 'qwen_t2i' takes 0 reference image.* pick an edit template"),
        (["batch_size=0"], "batch_size must be >= 1"),
    ],
)
def test_semantic_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        to_run_config(compose(overrides))


def test_one_step_without_terminal_stretch_is_allowed():
    assert to_run_config(compose(["sampler.steps=1", "sampler.shift_terminal=null"])).sampler.steps == 1


def test_every_config_group_option_composes():
    """Every option validates; one whose weights cannot fit this host (random_full's 28 B parameters on
    a machine without that much free memory) is refused by the preflight, naming the model."""
    from workbench.config import config_dir
    from workbench.config.limits import available_memory
    from workbench.config.preflight import seeded_parameters

    root = config_dir()
    for group in ("model", "template", "sampler", "lora", "precision", "reference"):
        for file in sorted((root / group).glob("*.yaml")):
            extra = ["images=[asset:sample_reference.png]", "height=64", "width=64"] if "edit" in file.stem and group == "template" else []
            if group == "template" and "family: qwen-image-2.1" in file.read_text():  # a 2.1 model's template
                extra = ["model=tiny_qwen21"]
            if file.stem == "tiny_layered":  # splits one image, sized by it
                extra = ["images=[asset:sample_reference.png]", "height=null", "width=null"]
            composed = compose([f"{group}={file.stem}", *extra])
            if file.stem == "random_full" and seeded_parameters(composed.model.tiny) * 4 > available_memory("auto")[0]:
                with pytest.raises(ConfigError, match=r"model=random_full: its weights need about .* GiB \(float32 / float32\)"):
                    to_run_config(composed)
                continue
            cfg = to_run_config(composed)
            assert getattr(cfg, group).name == file.stem, file


def test_compose_many_equals_compose_and_composes_once_per_group_choice(monkeypatch):
    """Sweeps plan through ``compose_many``: each result must be what ``compose`` gives (or raise the
    same error), while Hydra composes only once per distinct set of group overrides."""
    from omegaconf import OmegaConf

    import sys

    from workbench.config.build import compose_many

    compose_module = sys.modules["workbench.config.build"]  # the package re-exports the function under this name

    lists = [
        ["sampler.steps=4", "sampler.cfg=2.0"], ["sampler.steps=6", "sampler.cfg=3.0"],
        ["sampler=heun", "sampler.steps=3"], ["sampler=heun", "sampler.steps=5"],
        ["height=512", "width=512", "prompts=[a cat, a dog]"],
        ["experiment=edit_tiny", "sampler.steps=2"], ["+extra=1"],
        ["sampler.steps=abc"], ["sampler.stepz=3"], ["template=nope"],
    ]
    expected = []
    for overrides in lists:
        try:
            expected.append(OmegaConf.to_container(compose_module.compose(overrides), resolve=True))
        except Exception as err:
            expected.append(f"{type(err).__name__}: {err}")

    calls = []
    real = compose_module.compose
    monkeypatch.setattr(compose_module, "compose", lambda o, *a: calls.append(list(o)) or real(o, *a))
    got = [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else OmegaConf.to_container(r, resolve=True)
           for r in compose_many(lists)]
    assert got == expected
    assert got[0]["sampler"]["steps"] == 4 and got[3]["sampler"]["name"] == "heun" and got[3]["sampler"]["steps"] == 5
    assert got[7] == ("ComposeError: Error merging override sampler.steps=abc: Value 'abc' of type 'str' could not be "
                      "converted to Integer (key sampler.steps)")
    # Hydra runs once for the five value-only lists, once for sampler=heun, once for each other group
    # set; the three failing lists compose again on the slow path, for their exact error
    assert calls.count([]) == 1 and calls.count(["sampler=heun"]) == 1
    assert sorted(map(tuple, calls)) == sorted([(), ("sampler=heun",), ("experiment=edit_tiny",), ("+extra=1",),
                                                ("template=nope",), ("template=nope",),
                                                ("sampler.steps=abc",), ("sampler.stepz=3",)])
