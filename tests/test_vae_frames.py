"""perf.vae_single_frame: the VAE's causal 3-D convolutions as 2-D ones on one frame give diffusers' sums."""

import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

from workbench.config import ModelConfig
from workbench.models.tiny import build_vae
from workbench.vae_frames import SingleFrameCausalConv3d, set_vae_single_frame


def _causal_convs(vae):
    return [m for m in vae.modules() if isinstance(m, QwenImageCausalConv3d)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def vae():
    return build_vae(ModelConfig())


def test_switch_reaches_every_causal_conv_and_back(vae):
    keys = list(vae.state_dict())
    n = len(_causal_convs(vae))
    assert n > 10 and any(m.kernel_size == (3, 3, 3) for m in _causal_convs(vae))
    assert set_vae_single_frame(vae, True) == n
    assert all(type(m) is SingleFrameCausalConv3d for m in _causal_convs(vae))
    assert list(vae.state_dict()) == keys  # same parameters: a checkpoint loads either way
    assert set_vae_single_frame(vae, False) == n
    assert all(type(m) is QwenImageCausalConv3d for m in _causal_convs(vae))


def test_single_frame_decode_and_encode_equal_diffusers(vae):
    z = torch.randn(2, 16, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 1, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        set_vae_single_frame(vae, False)
        stock_img, stock_z = vae.decode(z).sample, vae.encode(x).latent_dist.mean
        set_vae_single_frame(vae, True)
        img, enc = vae.decode(z).sample, vae.encode(x).latent_dist.mean
        set_vae_single_frame(vae, False)
    assert img.shape == stock_img.shape and enc.shape == stock_z.shape
    # float32: the same products, summed in another order (the zero taps are gone)
    assert _rel(img, stock_img) < 1e-5 and _rel(enc, stock_z) < 1e-5


def test_later_frames_take_diffusers_path(vae):
    """A two-frame latent: the first frame runs in 2-D, the second reads the cached frame through diffusers' code."""
    z = torch.randn(1, 16, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    calls = []
    original = QwenImageCausalConv3d.forward

    def spy(self, x, cache_x=None):
        calls.append(cache_x is not None or x.shape[2] > 1)
        return original(self, x, cache_x)

    with torch.no_grad():
        set_vae_single_frame(vae, False)
        stock = vae.decode(z).sample
        set_vae_single_frame(vae, True)
        QwenImageCausalConv3d.forward = spy
        try:
            out = vae.decode(z).sample
        finally:
            QwenImageCausalConv3d.forward = original
            set_vae_single_frame(vae, False)
    assert out.shape[2] == stock.shape[2] > 1
    assert _rel(out, stock) < 1e-5
    assert calls and all(calls)  # only convolutions over cached or several frames fell back to the 3-D form


def test_a_conv_without_causal_zero_padding_keeps_the_3d_form():
    """Padding that is not kernel_t - 1 zero frames in front: the 2-D slice would not be the sum, so no shortcut."""
    conv = QwenImageCausalConv3d(4, 4, (3, 3, 3), padding=(0, 1, 1))  # no temporal padding: needs 3 frames
    conv.__class__ = SingleFrameCausalConv3d
    assert not conv._zeros_before_first_frame()
    x = torch.randn(1, 4, 3, 5, 5)
    with torch.no_grad():
        stock = QwenImageCausalConv3d.forward(conv, x)
        assert torch.equal(conv(x), stock)


def test_other_vaes_are_left_alone():
    """A VAE without Qwen's causal convolutions (here the 2-D SD-style one) is not touched."""
    from diffusers import AutoencoderKL

    sd = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    assert set_vae_single_frame(sd, True) == 0


def test_runs_switch_the_resident_vae_without_rebuilding(make_cfg):
    from workbench.models.build import resident_models
    from workbench.pipeline import Workbench

    args = ("sampler.steps=2", "height=64", "width=64")
    stock_cfg, fast_cfg = make_cfg(*args), make_cfg(*args, "perf.vae_single_frame=true")
    wb = Workbench.from_config(stock_cfg)
    before = len(resident_models())
    stock = wb.generate(stock_cfg, progress=False)[0]
    assert Workbench.from_config(fast_cfg).components is wb.components  # one build serves both
    fast = wb.generate(fast_cfg, progress=False)[0]
    assert len(resident_models()) == before
    assert all(type(m) is SingleFrameCausalConv3d for m in _causal_convs(wb.components.vae))
    assert torch.equal(fast.latents, stock.latents)  # the denoiser never sees the VAE
    a = torch.tensor(list(stock.image.getdata()), dtype=torch.int16)
    b = torch.tensor(list(fast.image.getdata()), dtype=torch.int16)
    assert (a - b).abs().max().item() <= 1  # the same image, up to one 8-bit level from rounding order
    wb.generate(stock_cfg, progress=False)
    assert all(type(m) is QwenImageCausalConv3d for m in _causal_convs(wb.components.vae))


def test_qwen21_notes_the_switch_as_unused(make_cfg):
    from workbench.config.unused import unused_notes

    notes = unused_notes(make_cfg("model=tiny_qwen21", "perf.vae_single_frame=true"))
    assert any(n.startswith("perf.vae_single_frame=true is not used") and "2-D convolutions" in n for n in notes)
    assert not any("vae_single_frame" in n for n in unused_notes(make_cfg("perf.vae_single_frame=true")))


def test_full_size_vae_config_has_the_causal_padding_everywhere():
    """The real VAE's layout (diffusers defaults, built on the meta device): every causal conv a single frame
    meets qualifies; only the encoder's temporal downsamplers (stride 2 in time, run on cached frames) do not."""
    with torch.device("meta"):
        real = AutoencoderKLQwenImage()
    set_vae_single_frame(real, True)
    left = [n for n, m in real.named_modules() if isinstance(m, QwenImageCausalConv3d) and not m._zeros_before_first_frame()]
    assert len(_causal_convs(real)) == 61
    assert left == ["encoder.down_blocks.5.time_conv", "encoder.down_blocks.8.time_conv"]


def test_importing_the_pipeline_leaves_the_model_libraries_for_the_first_build():
    """workbench.vae_frames imports diffusers' VAE module (3-5 s): it must load with the first model build, not with
    ``import workbench.pipeline`` (a refused config or a CLI's --help would pay it; run40 measured it moved there)."""
    import subprocess
    import sys

    code = "import sys, workbench.pipeline; print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
