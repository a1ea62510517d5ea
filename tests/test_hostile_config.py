"""A catalogue of careless and hostile config input (issue 12): each is refused at config time
(compose / to_run_config, before any model loads) with one line naming the key, the value and what
is allowed; the few that can only show at run time are checked there too."""

from __future__ import annotations

import math
import re
import struct
import zlib

import pytest
import torch
from PIL import Image

from workbench.config import ConfigError, compose, to_run_config
from workbench.config import limits
from workbench.config.build import ComposeError
from workbench.templates import TemplateError


def refused(*overrides: str) -> str:
    """The one-line message a config is refused with."""
    with pytest.raises(ConfigError) as err:
        to_run_config(compose(list(overrides)))
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- 1. non-finite numbers
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.cfg=nan", r"^sampler\.cfg=nan is not a finite number; expected a number in 1\.\.100 \(1 turns guidance off\)$"),
        ("sampler.cfg=inf", r"^sampler\.cfg=inf is not a finite number; expected a number in 1\.\.100"),
        ("strength=nan", r"^strength=nan is not a finite number; expected a number in \(0, 1\]"),
        ("sampler.shift=-inf", r"^sampler\.shift=-inf is not a finite number; expected a number > 0"),
        ("sampler.cfg_norm_strength=nan", r"^sampler\.cfg_norm_strength=nan is not a finite number; expected a number >= 0"),
        ("sampler.shift_terminal=inf", r"^sampler\.shift_terminal=inf is not a finite number; expected a number in \(0, 1\), or null"),
        ("sampler.base_shift=nan", r"^sampler\.base_shift=nan is not a finite number; expected a finite number$"),
        ("executor.cpus_per_actor=nan", r"^executor\.cpus_per_actor=nan is not a finite number; expected a number > 0"),
        ("lora.items=[{file: x.safetensors, strength: nan}]", r"^lora\.items\[\]\.strength=nan \(file 'x\.safetensors'\) is not a finite number"),
    ],
)
def test_non_finite_numbers_are_refused_naming_key_and_range(override, message):
    import re

    assert re.search(message, refused(override))


def test_cfg_above_its_limit_is_refused():
    assert refused("sampler.cfg=1e6") == "sampler.cfg=1000000.0 is over the limit of 100; Qwen-Image uses 2.5-5"


def test_runtime_non_finite_message_names_the_guidance_scale():
    from workbench.stages.numerics import NonFiniteError, check_finite

    latents, bad = torch.zeros(1, 4, 64), torch.full((1, 4, 64), math.inf)
    with pytest.raises(NonFiniteError, match=r"step 3 of 4 .*check the guidance scale sampler\.cfg=7\.5"):
        check_finite(latents, bad, 2, 4, guidance=7.5)
    with pytest.raises(NonFiniteError) as err:  # guidance off: cfg is no cause, so it is not named
        check_finite(latents, bad, 2, 4, guidance=1.0)
    assert "sampler.cfg" not in str(err.value) and "check the schedule" in str(err.value)


# ----------------------------------------------------------------------------- 2. unknown keys, every form
def test_appended_unknown_key_is_refused_with_a_suggestion():
    # Hydra's own hint for the typo `sampler.stepz=3`: accepted by Hydra, silently dropped before
    assert refused("+sampler.stepz=3") == "unknown key sampler.stepz; did you mean sampler.steps?"
    assert refused("+heigth=64") == "unknown key heigth; did you mean height?"
    assert refused("+lora.items=[{file: a.safetensors, strenght: 1}]").startswith(
        "unknown key lora.items[].strenght; did you mean lora.items[].strength?")


def test_unknown_key_without_plus_is_rewritten_at_compose():
    with pytest.raises(ComposeError, match=r"^unknown key sampler\.stepz; did you mean sampler\.steps\?$") as err:
        compose(["sampler.stepz=3"])
    assert "Key 'stepz' not in 'SamplerConfig'" in str(err.value.__cause__)  # Hydra / OmegaConf's own text
    with pytest.raises(ComposeError, match=r"^unknown key heigth; did you mean height\?$"):
        compose(["heigth=64"])
    with pytest.raises(ComposeError, match=r"^unknown key xyzzy; known keys: accel, batch_size, device, encoder_tap, executor"):
        compose(["xyzzy=1"])


def test_an_unknown_key_added_deeper_in_the_tree_is_found():
    from omegaconf import OmegaConf

    cfg = compose()
    OmegaConf.update(cfg, "model.tiny.transformer.num_layerz", 3, force_add=True)  # what Hydra's "++" does
    with pytest.raises(ConfigError, match=r"^unknown key model\.tiny\.transformer\.num_layerz; did you mean model\.tiny\.transformer\.num_layers\?$"):
        to_run_config(cfg)


def test_hydra_node_stays_allowed():
    from omegaconf import open_dict

    cfg = compose()
    with open_dict(cfg):
        cfg.hydra = {"run": {"dir": "outputs/x"}, "anything": 1}
    assert to_run_config(cfg).height == 64  # model=tiny's training size


def test_careless_python_calls_of_the_config_door(tmp_path):
    """From a notebook: one string is one override (it was parsed as the override 's'); non-strings, a plain dict
    for to_run_config and a folder for load_template are named, each with what to pass."""
    from workbench.config.build import load_template

    assert compose("sampler.steps=3").sampler.steps == 3
    with pytest.raises(ConfigError, match=r"overrides\[0\] must be a string, got int 3"):
        compose([3])
    with pytest.raises(ConfigError, match=r"overrides must be a list of strings, got NoneType"):
        compose(None)
    with pytest.raises(ConfigError, match=r"to_run_config takes what compose\(\[...\]\) returns \(or a Config\), got dict"):
        to_run_config({"sampler": {"steps": 3}})
    with pytest.raises(ConfigError, match=rf"template file '{tmp_path}' is a folder; give a YAML file with a 'text' key"):
        load_template(tmp_path)


@pytest.mark.parametrize("override, fix", [
    ("seeds=3", "seeds is a list: write seeds=[3]"),
    ("prompts=a red fox", "prompts is a list: write prompts=[a red fox]"),
    ("model.roots=/data/models", "model.roots is a list: write model.roots=[/data/models]"),
])
def test_a_scalar_for_a_list_key_shows_the_list_to_type(override, fix):
    """OmegaConf's 'int is not a ListConfig, list or tuple' named the key but not what to type."""
    message = refused(override)
    assert message.endswith(f"(key {override.split('=')[0]}); {fix}"), message


def test_other_compose_errors_are_one_line_naming_the_override():
    with pytest.raises(ComposeError, match=r"^Error merging override sampler\.steps=1e20: Value '1e\+20' of type 'float' could not be converted to Integer \(key sampler\.steps\)$"):
        compose(["sampler.steps=1e20"])
    with pytest.raises(ComposeError, match=r"^In 'config': Could not find 'template/qwen_t2x'; template options available: chat, qwen21, qwen_edit, qwen_edit_plus, qwen_t2i, raw$"):
        compose(["template=qwen_t2x"])
    with pytest.raises(ComposeError, match=r"^override 'sampler\.steps=\[': no viable alternative"):
        compose(["sampler.steps=["])


# ----------------------------------------------------------------------------- 3. runaway sizes
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["height=-64", "snap_size=true"], "height=-64 is not a positive multiple of 16 (8x VAE x 2x2 patches); use 16 or more (snap_size only floors sides >= 16)"),
        (["width=0"], "width=0 is not a positive multiple of 16 (8x VAE x 2x2 patches); use 16 or more (snap_size only floors sides >= 16)"),
        (["height=100000"], "height=100000 is over the limit of 8192 pixels per side"),
        (["height=100000", "width=100000", "snap_size=true"], "height=100000 is over the limit of 8192 pixels per side"),
        (["height=8192", "width=4112"], "height x width = 8192x4112 = 33685504 pixels, over the limit of 16777216 (4096x4096) pixels per image"),
        (["sampler.steps=2000000000"], "sampler.steps=2000000000 is over the limit of 1000 steps; Qwen-Image needs 20-50 (Lightning LoRAs 4-8)"),
        (["sampler.steps=1001"], "sampler.steps=1001 is over the limit of 1000 steps; Qwen-Image needs 20-50 (Lightning LoRAs 4-8)"),
        (["batch_size=65"], "batch_size=65 is over the limit of 64 images per forward pass"),
        (["seeds=[" + ",".join(map(str, range(33))) + "]", "prompts=[" + ",".join(["a cat"] * 32) + "]"],
         "32 prompts x 33 seeds = 1056 images, over the limit of 1024 per run; split the run (or use a sweep)"),
        (["reference.vae_area=100000000"], "reference.vae_area=100000000 is over the limit of 16777216 pixels"),
    ],
)
def test_runaway_sizes_name_value_and_limit(overrides, message):
    assert refused(*overrides) == message


def test_prompt_length_is_bounded_in_characters():
    long = "a" * (limits.MAX_PROMPT_CHARS + 1)
    assert refused(f"prompts=[{long}]").startswith("prompts[0] has 20001 characters, over the limit of 20000")
    assert refused(f"negative_prompt={long}").startswith("negative_prompt has 20001 characters, over the limit of 20000")


def test_sizes_at_the_limits_and_snapping_still_work():
    cfg = to_run_config(compose(["height=100", "width=72", "snap_size=true", "sampler.steps=1000", "sampler.shift_terminal=null"]))
    assert (cfg.height, cfg.width, cfg.sampler.steps) == (100, 72, 1000)


def test_memory_estimate_scales_with_batch_and_pixels():
    one = limits.estimate_bytes(1, 1024, 1024)
    assert limits.estimate_bytes(2, 1024, 1024) == 2 * one
    assert limits.estimate_bytes(1, 2048, 2048) == 4 * one
    # the real VAE (96 channels, float32) decoding 1024x1024 holds four full-resolution activations
    assert one >= 1024 * 1024 * 96 * 4 * 4
    free, where = limits.available_memory("cpu")
    assert free > 0 and where == "CPU RAM"


def test_sizes_that_cannot_fit_are_refused_with_estimate_and_free_memory(monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda device: (1024**3, "CPU RAM"))
    message = refused("model=tiny_random", "height=4096", "width=4096", "batch_size=4", "seeds=[0,1,2,3]")
    expected = limits.estimate_bytes(4, 4096, 4096, hidden=64, vae_base_dim=16, transformer_bytes=4, vae_bytes=4)
    assert message == (
        f"height=4096 width=4096 batch_size=4 needs about {expected / 1024**3:.1f} GiB for latents and activations "
        "(VAE decode at full resolution) besides the weights, more than the 1.0 GiB free on CPU RAM; "
        "lower height/width or batch_size"
    )
    # the batch is capped by the images there are: one seed x one prompt needs a quarter
    assert to_run_config(compose(["height=1024", "width=1024", "batch_size=4"])).batch_size == 4


@pytest.mark.parametrize("accel, per_block, fixed", [
    (["accel=taylorseer", "accel.max_order=2"], 3, 0),  # (order + 1) factors per block
    (["accel=taylorseer", "accel.granularity=block"], 2, 0),
    (["accel=pyramid_attention", "sampler.cfg_batching=padded"], 1, 0),  # one attention output per block
    (["accel=first_block"], 0, 2),  # two residuals
])
def test_what_accel_hooks_keep_between_steps_counts_in_the_memory_check(monkeypatch, accel, per_block, fixed):
    """TaylorSeer's state was ~10 GB at 1328x1328 (run44: an out-of-memory in the middle of a sweep cell); what the
    hooks keep is estimated with the activations and named, before any model loads."""
    base = ["model=tiny_random", "height=1024", "width=1024", "sampler.cfg=4", "seeds=[0,1]", "batch_size=2"]
    outputs = per_block * to_run_config(compose(base)).model.tiny.transformer.num_layers + fixed
    plain = limits.estimate_bytes(2, 1024, 1024, hidden=64, vae_base_dim=16, transformer_bytes=4, vae_bytes=4, cfg_batch=2)
    kept = outputs * (2 * 2) * (1024 * 1024 // 256) * 64 * 4  # rows: 2 images x cond / uncond; float32
    monkeypatch.setattr(limits, "available_memory", lambda device: (plain + kept - 1, "CPU RAM"))
    to_run_config(compose(base))  # without accel it fits
    message = refused(*base, *accel)
    name = accel[0].split("=")[1]
    assert message.startswith(f"height=1024 width=1024 batch_size=2 with accel={name} (of it "
                              f"{limits.fmt_bytes(kept)} of outputs its hooks keep between steps) needs about "
                              f"{limits.fmt_bytes(plain + kept)} for latents and activations")
    assert message.endswith("lower height/width or batch_size, or accel=none"
                            + (" or a lower accel.max_order" if "accel.max_order=2" in accel else ""))
    monkeypatch.setattr(limits, "available_memory", lambda device: (plain + kept, "CPU RAM"))
    to_run_config(compose(base + accel))  # exactly enough


def test_size_taken_from_the_reference_is_estimated_before_encoding(monkeypatch, make_cfg, bench):
    cfg = make_cfg("experiment=edit_tiny")  # height / width null: the last reference's VAE size (160x96)
    monkeypatch.setattr(limits, "available_memory", lambda device: (1000, "CPU RAM"))
    encoded = []
    monkeypatch.setattr(bench, "encode", lambda *a, **k: encoded.append(a))
    with pytest.raises(ConfigError, match=r"^height=\d+ width=\d+ batch_size=1 needs about [\d.]+ [KMG]?i?B .* more than the 1000 B free on CPU RAM"):
        bench.generate(cfg, progress=False)
    assert encoded == []


def test_truncated_prompt_and_snapped_size_are_in_the_image_notes(make_cfg, bench):
    cfg = make_cfg("height=72", "width=64", "snap_size=true", "sampler.steps=2", "max_sequence_length=8",
                   "prompts=[a red fox sitting in deep white snow under a grey winter sky, a cat]")
    long, short = bench.generate(cfg, progress=False)
    snap_note = "size 64x72 snapped to 64x64 (sides multiple of 16)"
    assert long.image.size == (64, 64) and short.image.size == (64, 64)
    assert short.notes == [snap_note]
    assert long.notes[0] == snap_note and len(long.notes) == 2
    full = len(bench.components.tokenizer("a red fox sitting in deep white snow under a grey winter sky<|im_end|>\n"
                                          "<|im_start|>assistant\n")["input_ids"])
    assert long.notes[1].startswith(f"prompt 0 (prompts[0]): truncated from {full} to 8 tokens (max_sequence_length)")


# ----------------------------------------------------------------------------- 4. devices
def test_unknown_device_lists_allowed_values_and_what_this_machine_has():
    have = ", ".join(limits.machine_devices())
    assert refused("device=tpu") == (f"device='tpu' is not a device the workbench runs on; allowed: auto, cpu, cuda, "
                                     f"cuda:N, mps (this machine has: {have})")


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_missing_device_is_refused_at_config_time(monkeypatch, device):
    monkeypatch.setattr(limits, "machine_devices", lambda: ["cpu"])
    assert refused(f"device={device}") == (
        f"device={device} but this machine has no such device (it has: cpu); allowed: auto, cpu, cuda, cuda:N, mps. "
        "Use device=auto (a GPU when there is one) or device=cpu")


def test_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(limits, "machine_devices", lambda: ["cpu", "cuda:0"])
    assert refused("device=cuda:3").startswith("device=cuda:3 but this machine has no such device (it has: cpu, cuda:0)")


# ----------------------------------------------------------------------------- 5. seeds
@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_seed_outside_generator_range(seed):
    assert refused(f"seeds=[0,{seed}]") == (
        f"seeds[1]={seed} is outside the seed range 0..18446744073709551615 (2**64-1, what torch.Generator.manual_seed accepts)")


def test_largest_seed_is_accepted():
    assert to_run_config(compose([f"seeds=[{2**64 - 1}]"])).seeds == [2**64 - 1]
    torch.Generator().manual_seed(2**64 - 1)  # the range is the generator's


# ----------------------------------------------------------------------------- 6. image files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path) -> None:
    """A 50 kB-claimed PNG header announcing 40000 x 40000 pixels (far over PIL's limit)."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))


@pytest.fixture
def image_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    (tmp_path / "notes.txt").write_text("not an image at all\n")
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    noise = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (256, 256, 3), generator=noise, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=90)  # the cut below lies in the scan data
    jpg = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    _bomb(tmp_path / "bomb.png")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.txt", "not an image file PIL can read; give a PNG / JPEG / WebP image"),
        ("missing.png", "file not found (looked at {dir}/missing.png); give the path of a PNG / JPEG / WebP image"),
        ("truncated.png", "the image file is damaged or truncated ("),
        ("bomb.png", "the image is too large to decode safely (Image size (1600000000 pixels) exceeds limit"),
    ],
)
@pytest.mark.parametrize("key", ["init_image", "images[0]"])
def test_bad_image_files_are_refused_at_config_time(image_files, name, message, key):
    path = image_files / name
    overrides = [f"init_image={path}"] if key == "init_image" else ["template=qwen_edit", f"images=[{path}]"]
    got = refused(*overrides)
    assert got.startswith(f"{key} '{path}': {message.format(dir=image_files)}"), got
    assert Image.MAX_IMAGE_PIXELS == 89478485  # PIL's security default is left alone


def test_load_image_checks_again_and_decodes_everything(image_files):
    from workbench.pipeline import load_image

    assert load_image(str(image_files / "good.png"), "init_image").getpixel((3, 3)) == (200, 30, 30)
    # a truncated JPEG has a valid header (the config-time check passes) but fails decoding here
    to_run_config(compose([f"init_image={image_files / 'truncated.jpg'}"]))
    with pytest.raises(ConfigError, match=r"^images\[1\] '.*truncated\.jpg': the image file is damaged or truncated \(image file is truncated"):
        load_image(str(image_files / "truncated.jpg"), "images[1]")
    with pytest.raises(ConfigError, match=r"^init_image '.*bomb\.png': the image is too large to decode safely"):
        load_image(str(image_files / "bomb.png"), "init_image")
    with pytest.raises(ConfigError, match=r"^images '.*notes\.txt': not an image file"):
        load_image(str(image_files / "notes.txt"))


# ----------------------------------------------------------------------------- 7. LoRA names under model.roots
def test_lora_by_name_is_resolved_through_model_roots(tmp_path, monkeypatch, make_cfg, bench):
    from safetensors.torch import save_file

    from workbench.lora import apply_loras, lora_set

    root = tmp_path / "my_models"
    (root / "loras").mkdir(parents=True)
    save_file({"img_in.lora_A.weight": torch.full((4, 64), 0.01), "img_in.lora_B.weight": torch.full((192, 4), 0.01)},  # model=tiny: 6 heads x 32
              str(root / "loras" / "tiny_style.safetensors"))
    monkeypatch.delenv("WORKBENCH_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./models here
    item = "lora.items=[{file: tiny_style, strength: 0.5}]"
    message = refused(item)
    assert message.startswith("lora.items[0].file: LoRA file 'tiny_style' not found; looked at: ")
    assert "put it in loras/ under a model root (model.roots, else $WORKBENCH_MODELS, else ./models)" in message

    cfg = make_cfg(item, f"model.roots=[{root}]", "height=64", "width=64", "sampler.steps=2")
    try:  # and the run finds it there too
        bench.generate(cfg, progress=False)
        (weights, strength), = lora_set(bench.components.transformer).active
        assert weights.source == str((root / "loras" / "tiny_style.safetensors").resolve()) and strength == 0.5
    finally:
        apply_loras(bench.components.transformer, [])


# ----------------------------------------------------------------------------- 8. drop_until ending mid-token
def test_drop_until_inside_a_token_blames_the_template_at_config_time():
    assert refused("template.drop_until='<|im_start|>us'") == (
        "template 'qwen_t2i': drop_until '<|im_start|>us' ends inside the token 'user' of the template text, so no "
        "token boundary follows the marker and the dropped prefix cannot end there. End drop_until where a token "
        "ends: '<|im_start|>user' (through that token) or '<|im_start|>' (before it)")


def test_drop_until_merging_with_every_prompt_blames_the_template(tokenizer):
    from workbench.config import TemplateConfig
    from workbench.templates import TemplateError, render, tokenize

    spaced = TemplateConfig(name="md", text="### Task: draw.\n### Prompt: {prompt}", drop_until="### Prompt: ")
    with pytest.raises(TemplateError, match=r"^template 'md': drop_until '### Prompt: ' ends with ' ', which the "
                                            r"tokenizer joins with the start of the prompt into the token ' a'"):
        tokenize(tokenizer, render(spaced, "a cat", 0, tokenizer))


def test_prompt_with_leading_newlines_still_blames_the_prompt(make_cfg, tokenizer):
    from workbench.templates import TemplateError, render, tokenize

    with pytest.raises(TemplateError, match=r"merge into one token '\\n\\n\\n' .*the prompt starts with whitespace.*"
                                            r"Start the prompt without leading whitespace"):
        tokenize(tokenizer, render(make_cfg().template, "\n\nleading newlines", 0, tokenizer))


# ----------------------------------------------------------------------------- 9. reference image counts
def test_four_images_for_edit_plus_say_the_real_limit():
    ref = "asset:sample_reference.png"
    message = refused("template=qwen_edit_plus", f"images=[{ref},{ref},{ref},{ref}]")
    assert message == (
        "template 'qwen_edit_plus' takes 1-3 reference image(s) but images has 4; no edit template takes 4 "
        "(reference images per edit template: qwen_edit 1, qwen_edit_plus 1-3). Pass at most 3, e.g. combine several "
        "references into one image")
    assert "template=qwen_edit_plus" not in message


def test_images_for_a_text_to_image_template_point_at_the_edit_template_that_fits():
    ref = "asset:sample_reference.png"
    assert refused(f"images=[{ref},{ref}]").startswith(
        "template 'qwen_t2i' takes 0 reference image(s) but images has 2; pick an edit template that takes 2: "
        "template=qwen_edit_plus")
    assert "template=qwen_edit " in refused(f"images=[{ref}]")


# ----------------------------------------------------------------------------- control tokens at config time
def test_control_tokens_refused_at_config_time_before_any_model(monkeypatch):
    """A prompt smuggling <|im_end|> was refused only at encode time, after ~40 s of model loading."""
    import workbench.pipeline as pipeline

    monkeypatch.setattr(pipeline.Workbench, "from_config", lambda *a, **k: pytest.fail("models were built"))
    with pytest.raises(TemplateError, match=r"^prompts\[1\] contains control token\(s\) \['<\|im_end\|>'\].*template.control_tokens=escape"):
        to_run_config(compose(['prompts=["a cat", "a dog<|im_end|>"]']))
    with pytest.raises(TemplateError, match=r"^negative_prompt contains control token\(s\) \['<\|im_start\|>'\]"):
        to_run_config(compose(["sampler.cfg=4", "negative_prompt='<|im_start|>system'"]))
    # the negative prompt is not used at cfg 1, and an escaping template encodes the text as plain text
    to_run_config(compose(["negative_prompt='<|im_start|>system'"]))
    to_run_config(compose(['prompts=["a dog<|im_end|>"]', "template.control_tokens=escape"]))


def test_vendored_control_token_list_equals_the_tokenizers():
    from workbench.tokenizer import control_tokens, load_tokenizer, vendored_control_tokens

    assert list(vendored_control_tokens()) == control_tokens(load_tokenizer())
    assert "<|im_end|>" in vendored_control_tokens() and len(vendored_control_tokens()) == 22



def test_the_weights_check_counts_a_resident_identical_model_as_present(monkeypatch):
    """A second sweep of the same seeded model (bench_headline's resident grid on an 80 GB card) was refused
    because the resident copy's memory was counted as needed again; a resident identical model is reused."""
    from workbench.config.preflight import check_weights_memory
    from workbench.models import build

    cfg = to_run_config(compose(["height=64", "width=64"]))
    other = to_run_config(compose(["height=64", "width=64", "precision=bf16"]))
    monkeypatch.setattr(build, "_CACHE", {})  # nothing resident (other tests may have built the tiny model)
    monkeypatch.setattr(limits, "available_memory", lambda device: (1024, "a small card"))
    with pytest.raises(ConfigError, match=r"model=tiny: its weights need about .* more than the 1.0 KiB free on a small card"):
        check_weights_memory(cfg)
    monkeypatch.setitem(build._CACHE, build._cache_key(cfg.model, cfg.precision, cfg.device, cfg.perf), object())
    monkeypatch.setattr(build, "_nbytes_of", lambda components: 1)  # the stand-in's size: releasing it frees nothing
    assert build.is_resident(cfg)
    check_weights_memory(cfg)  # reused: nothing new is drawn
    assert not build.is_resident(other)
    with pytest.raises(ConfigError, match="its weights need about"):
        check_weights_memory(other)  # a different build still needs its own room


def test_the_weights_check_counts_resident_builds_a_new_build_would_release(monkeypatch):
    """run44: bench_accel's compiled sweep after an eager one on an 80 GB card was refused (53 GiB needed, 12 MiB
    free): the memory was this process's own resident build, which a new build releases (models.build._make_room)."""
    from workbench.config.preflight import check_weights_memory, seeded_parameters, weight_width
    from workbench.models import build

    cfg = to_run_config(compose(["height=64", "width=64"]))
    other = to_run_config(compose(["height=64", "width=64", "precision=bf16"]))
    monkeypatch.setattr(build, "_CACHE", {})
    monkeypatch.setattr(build, "_ABOUT", {})
    build.cached_components(cfg.model, cfg.precision, cfg.device, cfg.perf)  # a real resident build
    held = build.reclaimable_bytes(other)
    need = seeded_parameters(other.model.tiny) * weight_width(other.precision)
    assert held == sum(sum(m["bytes"].values()) for m in build.resident_models()) > need > 0
    assert build.reclaimable_bytes(cfg) == 0  # its own build is not "another"
    monkeypatch.setattr(limits, "available_memory", lambda device: (1024, "a small card"))
    check_weights_memory(other)  # fits once the resident build goes
    monkeypatch.setattr(build, "_CACHE", {k: v for k, v in build._CACHE.items()})
    monkeypatch.setattr(build, "_nbytes_of", lambda components: 1)  # now releasing it would not make room
    with pytest.raises(ConfigError, match=r"more than the 1.0 KiB free on a small card \(with the 1 B of other resident "
                                          r"builds it would release\); it is meant for a CUDA GPU"):
        check_weights_memory(other)


def test_a_build_that_does_not_fit_releases_the_least_recently_used_builds_first(monkeypatch, caplog):
    from workbench.models import build

    a, b, c = (to_run_config(compose(["height=64", "width=64", *extra]))
               for extra in ([], ["precision=bf16"], ["perf.fast_attention=true"]))
    monkeypatch.setattr(build, "_CACHE", {})
    monkeypatch.setattr(build, "_ABOUT", {})
    for run in (a, b, a):  # a is used last: b is the least recently used
        build.cached_components(run.model, run.precision, run.device, run.perf)
    # room for one more build while one other is resident, not while two are
    monkeypatch.setattr(limits, "available_memory", lambda device: (10**12 if len(build._CACHE) < 2 else 1, "a card"))
    with caplog.at_level("WARNING", logger="workbench.models.build"):
        build.cached_components(c.model, c.precision, c.device, c.perf)
    assert [build.is_resident(run) for run in (a, b, c)] == [True, False, True]
    assert len(caplog.records) == 1 and re.search(r"releasing the resident build \w+ \(model=tiny precision=bf16 perf=eager"
                                                  r", .*\) to make room for the .* of model=tiny precision=fp32 on a card",
                                                  caplog.records[0].getMessage())
    monkeypatch.setattr(limits, "available_memory", lambda device: (1, "a card"))
    build.cached_components(a.model, a.precision, a.device, a.perf)  # resident: nothing is built, nothing released
    assert build.is_resident(c)


def test_cuda_free_memory_counts_what_torch_holds_unused(monkeypatch):
    """After free_models() the caching allocator may keep the blocks (reusable by this process) while the driver's
    free figure does not show them: both count, or a rebuild after a free is refused for memory it has."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (1000, 80_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 50_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 20_000)
    assert limits.available_memory("cuda:0") == (31_000, "cuda:0")
