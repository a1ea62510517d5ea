"""``perf.vae_single_frame``: the Qwen-Image VAE's causal 3-D convolutions run as 2-D ones on a single frame.

The VAE of the Qwen2.5-VL family (diffusers' ``AutoencoderKLQwenImage``, Wan's video VAE) pads the time axis of
each ``QwenImageCausalConv3d`` with ``kernel_t - 1`` zero frames before the first frame. An image is one frame
with nothing cached before it, so of a 3x3x3 kernel only the last temporal slice meets data: the output is that
3x3 slice applied in 2-D, and stock diffusers spends two thirds of the decoder's (and encoder's) convolution
multiply-adds on zeros. The sums are the same up to the kernels' rounding order (tests/test_vae_frames.py).
Speed: benchmarks/README.md. Qwen-Image-2.1's VAE (``AutoencoderKLQwenImage21``) is built on 2-D convolutions
already, so this changes nothing there.

Switched per run on the resident VAE by changing the convolutions' class (same parameters, same state-dict keys,
``isinstance`` unchanged), so a sweep over the switch never rebuilds a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d


class SingleFrameCausalConv3d(QwenImageCausalConv3d):
    """``QwenImageCausalConv3d`` that convolves a lone first frame with its kernel's last temporal slice in 2-D."""

    def forward(self, x: torch.Tensor, cache_x=None) -> torch.Tensor:
        if cache_x is None and x.shape[2] == 1 and self._zeros_before_first_frame():
            pad_w, _, pad_h = self._padding[:3]
            out = F.conv2d(x[:, :, 0], self.weight[:, :, -1], self.bias, self.stride[1:], (pad_h, pad_w),
                           self.dilation[1:], self.groups)
            return out.unsqueeze(2)
        return super().forward(x, cache_x)

    def _zeros_before_first_frame(self) -> bool:
        """Whether every temporal tap but the last reads the causal zero padding (stride and dilation 1 in time,
        ``kernel_t - 1`` zero frames in front, none behind): then the 2-D slice is the whole sum."""
        kernel_t = self.kernel_size[0]
        return (self.stride[0] == 1 and self.dilation[0] == 1 and self._padding[4] == kernel_t - 1
                and self._padding[5] == 0 and self.padding_mode == "zeros")


def set_vae_single_frame(vae, enabled: bool) -> int:
    """Switch every causal convolution of ``vae`` to the single-frame form (or back to diffusers' class).

    Returns how many convolutions the VAE has that the switch applies to (0 for a VAE of another class)."""
    target = SingleFrameCausalConv3d if enabled else QwenImageCausalConv3d
    count = 0
    for module in vae.modules():
        if type(module) in (QwenImageCausalConv3d, SingleFrameCausalConv3d):
            module.__class__ = target
            count += 1
    return count
