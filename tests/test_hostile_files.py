"""Hostile and careless model / LoRA files (issue 12): each gets one line naming the file and the fix,
before any weight is read; `workbench models` lists the rest; loaded weights never keep the file's storage.

CI runs as root, where chmod 000 does not stop a read: unreadable files are simulated by making the
header reader's ``open`` raise PermissionError; link loops, dangling links and directories are real.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers.checkpoints import reference, write_dit, write_dit_gguf, write_pipeline_folder, write_te_comfy, write_vae
from workbench.config import LoraItem, ModelConfig, ModelSource
from workbench.loading import header as header_module
from workbench.loading.errors import LoadError
from workbench.loading.load import load_component
from workbench.lora import LoraError, LoraNotFound, linear_shapes, load_lora, read_lora_file

CPU, F32 = torch.device("cpu"), torch.float32
FILES = {
    "text_encoder": "text_encoders/te.safetensors",
    "transformer": "diffusion_models/dit.safetensors",
    "vae": "vae/vae.safetensors",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("hostile")
    for sub in ("text_encoders", "diffusion_models", "vae", "loras"):
        (r / sub).mkdir()
    write_te_comfy(r / FILES["text_encoder"], "fp32")
    write_dit(r / FILES["transformer"], "fp32")
    write_vae(r / FILES["vae"], "wan")
    write_dit_gguf(r / "diffusion_models/dit-Q8_0.gguf")
    write_pipeline_folder(r / "Qwen-Image-tiny")
    write_lora(r / "loras/good.safetensors")
    return r


def write_lora(path: Path, wrong_width: bool = False) -> Path:
    """A rank-2 LoRA on the tiny transformer's first to_q (``wrong_width``: made for another model size)."""
    out_f, in_f = linear_shapes(reference()[1])["transformer_blocks.0.attn.to_q"]
    g = torch.Generator().manual_seed(0)
    save_file({
        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, in_f + (8 if wrong_width else 0), generator=g),
        "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(out_f, 2, generator=g) * 0.01,
    }, str(path))
    return path


def cfg(root, **names) -> ModelConfig:
    slots = dict(FILES) | names
    return ModelConfig(source=ModelSource.files, roots=[str(root)], arch_rules="tiny", **slots)


def load(root, slot, name):
    return load_component(slot, cfg(root, **{slot: name}), CPU, F32)


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture
def unreadable(monkeypatch):
    """Files whose name is in the returned set raise PermissionError when the header reader opens them."""
    names: set[str] = set()

    def fake_open(file, *args, **kwargs):
        if Path(file).name in names:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(header_module, "open", fake_open, raising=False)
    return names


def _links(folder: Path) -> dict[str, Path]:
    """A two-link loop, a dangling link and a directory named like a weights file, in ``folder``."""
    made = {"loop": folder / "loop_a.safetensors", "dangling": folder / "dangling.safetensors",
            "directory": folder / "folder.safetensors"}
    if not made["loop"].is_symlink():
        os.symlink("loop_b.safetensors", made["loop"])
        os.symlink("loop_a.safetensors", folder / "loop_b.safetensors")
        os.symlink("gone.safetensors", made["dangling"])
        made["directory"].mkdir()
    return made


# ----------------------------------------------------------------------------- fresh, aligned storage
def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes in storage that starts 8 bytes past a 64-byte boundary (safetensors 0.8 on some machines)."""
    n = t.numel() * t.element_size()
    buf = torch.empty(n + 128, dtype=torch.uint8)
    start = (8 - buf.data_ptr()) % 64
    out = buf[start:start + n].view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 64 == 8
    return out


@pytest.fixture
def misaligned_safetensors(monkeypatch):
    """Every tensor safetensors hands out is a misaligned view; returns how many were handed out."""
    import safetensors

    real, count = safetensors.safe_open, [0]

    class Handle:
        def __init__(self, *args, **kwargs):
            self._f = real(*args, **kwargs)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def metadata(self):
            return self._f.metadata()

        def get_tensor(self, name):
            count[0] += 1
            return _misaligned(self._f.get_tensor(name))

    monkeypatch.setattr(safetensors, "safe_open", Handle)
    return count


def assert_aligned(module: torch.nn.Module):
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    bad = [n for n, t in tensors.items() if t.numel() and t.data_ptr() % 64]
    assert not bad, bad[:5]


@pytest.mark.parametrize("slot, name", [
    ("text_encoder", FILES["text_encoder"]), ("transformer", FILES["transformer"]), ("vae", FILES["vae"]),
    ("transformer", "diffusion_models/dit-Q8_0.gguf"), ("text_encoder", "Qwen-Image-tiny"), ("vae", "Qwen-Image-tiny"),
])
def test_every_loaded_tensor_is_64_byte_aligned(root, slot, name):
    assert_aligned(load(root, slot, name).module)


def test_misaligned_safetensors_storage_still_gives_aligned_weights_and_the_same_latents(root, make_cfg, misaligned_safetensors):
    """The fresh-machine failure: safetensors returned 8-byte-aligned fp32 tensors, the loader kept them
    and latents differed in the last bits. Every weight must be copied to aligned storage."""
    from workbench.models.components import build_components
    from workbench.pipeline import Workbench

    components = build_components(cfg(root), make_cfg().precision, "cpu")
    assert misaligned_safetensors[0] > 100  # the loader really read through the misaligning reader
    for part in (components.text_encoder, components.transformer, components.vae):
        assert_aligned(part)
    run = make_cfg("model=tiny_random", "sampler.steps=2", "seeds=[5]", "prompts=[a red fox]", "device=cpu")
    ours = Workbench(components).generate(run, progress=False)[0]
    ref = Workbench.from_config(run).generate(run, progress=False)[0]
    assert torch.equal(ours.latents, ref.latents)
    assert np.array_equal(np.asarray(ours.image), np.asarray(ref.image))


def test_lora_tensors_get_fresh_aligned_storage(root, misaligned_safetensors, tmp_path):
    path = write_lora(tmp_path / "aligned_lora.safetensors")
    tensors, _ = read_lora_file(path)
    assert misaligned_safetensors[0] == 2
    assert all(t.data_ptr() % 64 == 0 for t in tensors.values())


# ----------------------------------------------------------------------------- model files: one line each
@pytest.mark.parametrize("case, message", [
    ("loop", r"loop_a.safetensors: symbolic link loop .*point it at the real file or remove it"),
    ("dangling", r"dangling.safetensors: dangling symbolic link to 'gone.safetensors', which does not exist; fix the link or remove it"),
    ("directory", r"folder.safetensors: is a directory where a weights file is expected; give the .safetensors / .gguf file inside it"),
])
def test_broken_paths_in_a_model_slot(root, case, message):
    name = _links(root / "vae")[case].relative_to(root).as_posix()
    with pytest.raises(LoadError, match=message) as err:
        load(root, "vae", name)
    one_line(err)


def test_unreadable_model_file(root, unreadable):
    os.link(root / FILES["vae"], root / "vae/locked.safetensors") if not (root / "vae/locked.safetensors").exists() else None
    unreadable.add("locked.safetensors")
    with pytest.raises(LoadError, match=r"vae/locked.safetensors: permission denied: .*\(chmod a\+r\)") as err:
        load(root, "vae", "vae/locked.safetensors")
    one_line(err)


def test_pickle_renamed_safetensors_in_a_model_slot(root):
    torch.save({"w": torch.zeros(2)}, root / "vae/pickled.safetensors")  # never unpickled: refused from its magic bytes
    with pytest.raises(LoadError, match=r"pickled.safetensors: not a safetensors file but a Python pickle .* are refused") as err:
        load(root, "vae", "vae/pickled.safetensors")
    one_line(err)


def test_header_that_is_json_but_not_tensors(root):
    raw = b"[1, 2, 3]"
    (root / "vae/list.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(LoadError, match=r"list.safetensors: corrupt safetensors: the header is JSON but not an object"):
        load(root, "vae", "vae/list.safetensors")


# ----------------------------------------------------------------------------- LoRA files: one line each
def _lora(path: str):
    return load_lora(LoraItem(file=path), reference()[1])


def test_pickle_renamed_safetensors_as_a_lora(tmp_path):
    torch.save({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 8)}, tmp_path / "lora.safetensors")
    with pytest.raises(LoraError, match=r"LoRA file .*lora.safetensors: not a safetensors file but a Python pickle") as err:
        _lora(str(tmp_path / "lora.safetensors"))
    one_line(err)


def test_truncated_lora(tmp_path):
    data = write_lora(tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(LoraError, match=r"LoRA file .*cut.safetensors: truncated safetensors: .*fetch it again") as err:
        _lora(str(tmp_path / "cut.safetensors"))
    one_line(err)


def test_corrupt_lora_header_and_data(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes((12).to_bytes(8, "little") + b"{not json!!}" + b"\0" * 32)
    with pytest.raises(LoraError, match=r"LoRA file .*junk.safetensors: corrupt safetensors: header is not valid JSON"):
        _lora(str(tmp_path / "junk.safetensors"))
    # a valid header whose tensor does not fit its bytes (4x64 fp32 needs 1024, 16 given)
    head = json.dumps({"a.lora_A.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "bad_data.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + b"\0" * 16)
    with pytest.raises(LoraError, match=r"LoRA file .*bad_data.safetensors: could not read its tensors .*the file is damaged") as err:
        _lora(str(tmp_path / "bad_data.safetensors"))
    one_line(err)


@pytest.mark.parametrize("case, message", [
    ("loop", r"LoRA file .*loop_a.safetensors: symbolic link loop"),
    ("dangling", r"LoRA file .*dangling.safetensors: dangling symbolic link to 'gone.safetensors'"),
    ("directory", r"LoRA file .*folder.safetensors: is a directory where a LoRA .safetensors file is expected"),
])
def test_broken_paths_as_a_lora(tmp_path, case, message):
    path = _links(tmp_path)[case]
    with pytest.raises(LoraError, match=message) as err:
        _lora(str(path))
    one_line(err)


def test_broken_lora_path_is_refused_at_config_time(tmp_path, make_cfg):
    from workbench.config import ConfigError

    link = _links(tmp_path)["dangling"]
    with pytest.raises(ConfigError, match=r"lora.items\[0\].file: LoRA file .*dangling.safetensors: dangling symbolic link") as err:
        make_cfg(f"lora.items=[{{file:{link}}}]")
    one_line(err)


def test_unreadable_lora(tmp_path, unreadable):
    write_lora(tmp_path / "locked_lora.safetensors")
    unreadable.add("locked_lora.safetensors")
    with pytest.raises(LoraError, match=r"LoRA file .*locked_lora.safetensors: permission denied") as err:
        _lora(str(tmp_path / "locked_lora.safetensors"))
    one_line(err)


def test_model_file_given_as_a_lora(root):
    with pytest.raises(LoraError, match=r"LoRA file .*vae.safetensors is a VAE \(original Wan-2.1 names\), not a LoRA; give it as model.vae"):
        _lora(str(root / FILES["vae"]))


def test_missing_lora_is_still_a_file_not_found_for_config_checks(tmp_path):
    with pytest.raises(LoraNotFound, match=r"LoRA file .*nothing.safetensors' not found") as err:
        _lora(str(tmp_path / "nothing.safetensors"))
    assert isinstance(err.value, FileNotFoundError)  # LoraConfig's config-time check catches that


# ----------------------------------------------------------------------------- workbench models
def test_models_listing_marks_broken_entries_and_lists_the_rest(tmp_path, capsys, unreadable, monkeypatch):
    from workbench.cli import main

    r = tmp_path / "models"
    (r / "vae").mkdir(parents=True)
    write_vae(r / "vae/good.safetensors", "wan")
    os.link(r / "vae/good.safetensors", r / "vae/locked.safetensors")
    unreadable.add("locked.safetensors")
    _links(r / "vae")
    os.symlink("..", r / "vae/up")  # a folder link back to an ancestor: walked once, not forever
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no_hub"))

    assert main(["models", "--json", "--no-hf-cache", "--root", str(r)]) == 0
    listing = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert listing["vae/good.safetensors"]["kind"] == "vae"
    expected = {
        "vae/locked.safetensors": "permission denied",
        "vae/loop_a.safetensors": "symbolic link loop",
        "vae/loop_b.safetensors": "symbolic link loop",
        "vae/dangling.safetensors": "dangling symbolic link to 'gone.safetensors'",
        "vae/folder.safetensors": "is a directory where a weights file is expected",
    }
    for name, reason in expected.items():
        assert listing[name]["kind"] == "unreadable" and reason in listing[name]["note"], listing[name]
    assert len(listing) == 6  # nothing listed twice through the link to ".."

    assert main(["models", "--no-hf-cache", "--root", str(r)]) == 0
    table = capsys.readouterr().out
    assert "vae/good.safetensors" in table
    loop_line = next(line for line in table.splitlines() if "loop_a.safetensors" in line)
    assert loop_line.startswith("unreadable") and "symbolic link loop" in loop_line


# ----------------------------------------------------------------------------- every header before any weight
@pytest.fixture
def no_weights_read(monkeypatch):
    """Fails the test if any component's weights are read (``stream.fill`` is where tensor data is read; every
    preparer looks it up there when its load runs)."""
    from workbench.loading import stream

    calls = []
    monkeypatch.setattr(stream, "fill", lambda model, source, *a, **k: calls.append(source.where))
    return calls


@pytest.mark.parametrize("make_bad, message", [
    (lambda r: (r / "vae/bad.safetensors").write_bytes((r / FILES["vae"]).read_bytes()[:-200]), r"vae/bad.safetensors: truncated safetensors"),
    (lambda r: (r / "vae/bad.safetensors").write_bytes((r / FILES["transformer"]).read_bytes()), r"bad.safetensors given as model.vae is a diffusion transformer"),
])
def test_a_bad_vae_fails_before_the_transformer_loads(root, make_cfg, no_weights_read, make_bad, message):
    from workbench.models.components import build_components

    make_bad(root)
    with pytest.raises(LoadError, match=message) as err:
        build_components(cfg(root, vae="vae/bad.safetensors"), make_cfg().precision, "cpu")
    one_line(err)
    assert no_weights_read == []  # neither the text encoder nor the transformer was read


def test_a_bad_lora_fails_before_any_model_loads(root, make_cfg, no_weights_read, tmp_path):
    """Through the whole path a run takes (config -> Workbench.from_config -> cached_components)."""
    from workbench.pipeline import Workbench

    files = ["model=files_comfyui", f"model.roots=[{root}]", "model.arch_rules=tiny", "device=cpu"] + [
        f"model.{slot}={name}" for slot, name in FILES.items()
    ]
    wide = write_lora(tmp_path / "wide.safetensors", wrong_width=True)
    with pytest.raises(LoraError, match=r"wide.safetensors: 1 shape mismatch\(es\) .*Nothing was applied") as err:
        Workbench.from_config(make_cfg(*files, f"lora.items=[{{file:{wide}}}]"))
    one_line(err)
    torch.save({}, tmp_path / "pickle.safetensors")
    with pytest.raises(LoraError, match=r"pickle.safetensors: not a safetensors file but a Python pickle"):
        Workbench.from_config(make_cfg(*files, f"lora.items=[{{file:{tmp_path / 'pickle.safetensors'}}}]"))
    assert no_weights_read == []


def test_a_bad_lora_on_the_tiny_model_fails_before_it_is_built(make_cfg, tmp_path, monkeypatch):
    from workbench.models import tiny
    from workbench.models.components import build_components

    torch.save({}, tmp_path / "pickle.safetensors")
    monkeypatch.setattr(tiny, "build_transformer", lambda *a: pytest.fail("built before the LoRA was checked"))
    with pytest.raises(LoraError, match=r"pickle.safetensors: not a safetensors file but a Python pickle"):
        build_components(make_cfg().model, make_cfg().precision, "cpu", loras=[LoraItem(file=str(tmp_path / "pickle.safetensors"))])


def test_a_file_builds_weight_need_is_read_from_the_headers(root):
    """models.build releases resident builds to make room for a new one by what its weights take: for files, the
    parameters their headers declare (nothing read), times the precision's width; equal to what the load holds."""
    from workbench.config.preflight import weight_width
    from workbench.models.build import weights_need
    from workbench.models.catalogue import precision_config

    model = cfg(root)
    loaded = sum(p.numel() for slot in FILES for p in load(root, slot, FILES[slot]).module.parameters())
    for name in ("fp32", "bf16"):
        precision = precision_config(name)
        assert weights_need(model, precision) == loaded * weight_width(precision)
