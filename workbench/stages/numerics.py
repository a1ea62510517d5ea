"""The denoise loop's numerics guard: stop at the first non-finite step and name the likely cause."""

from __future__ import annotations

import torch

from workbench.errors import RunFailure


class NonFiniteError(RunFailure, FloatingPointError):
    """The denoise loop produced NaN / Inf."""


def all_finite(latents: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on their device (reading it waits for the device)."""
    return torch.isfinite(prediction).all() & torch.isfinite(latents).all()


def check_finite(latents: torch.Tensor, prediction: torch.Tensor, step: int, steps: int,
                 guidance: float | None = None) -> None:
    """Raise at the first step whose prediction or latents hold NaN / Inf (one device sync per step).

    ``guidance``: the run's sampler.cfg; above 1 it multiplies the cond - uncond difference, and a
    large scale can overflow, so the message names it among the causes."""
    if bool(all_finite(latents, prediction)):  # one device sync
        return
    what = "model prediction" if not bool(torch.isfinite(prediction).all()) else "latents"
    if prediction.dtype == torch.float16:
        raise NonFiniteError(
            f"non-finite {what} at denoise step {step + 1} of {steps} with a float16 transformer "
            "(precision=fp16 or precision.transformer=float16): Qwen-Image's activations overflow float16's "
            "range (max 65504). Use precision=bf16 (same memory, float32's range), or fp32"
        )
    scale = (f"the guidance scale sampler.cfg={guidance:g} (guidance multiplies the cond - uncond difference; "
             "Qwen-Image uses 2.5-5), " if guidance is not None and guidance > 1 else "")
    raise NonFiniteError(
        f"non-finite {what} at denoise step {step + 1} of {steps} (transformer dtype {prediction.dtype}); "
        f"check {scale}the schedule (one-step schedules with a terminal stretch give NaN sigmas), the LoRA "
        "strengths and the inputs"
    )


class FiniteWatch:
    """``check_finite`` on every step of a denoise loop; on CUDA each step's answer is read one step late.

    Reading a GPU value makes the CPU wait until the GPU has run everything queued; at the end of a step
    that empties the queue, and the next step's kernels start only as the CPU launches them (the fp8 forward
    idled 6 % of its time, run36). On CUDA each step's flag is copied to pinned memory behind an event and
    read after the next step is queued: the error still names the first non-finite step, raised one step
    later. On other devices (nothing to overlap) it is read at once.
    """

    def __init__(self, device: torch.device, steps: int, guidance: float | None = None, lag: int | None = None):
        self.cuda = torch.device(device).type == "cuda"
        self.lag = (1 if self.cuda else 0) if lag is None else lag  # lag: tests read late on the CPU too
        self.steps, self.guidance = steps, guidance
        self.pending: list[tuple] = []  # (step, flag, event, latents, prediction), oldest first

    def step(self, step: int, latents: torch.Tensor, prediction: torch.Tensor) -> None:
        flag = all_finite(latents, prediction)
        event = None
        if self.cuda and self.lag:
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(flag.device))  # the stream of the copy (any GPU)
            flag = host
        self.pending.append((step, flag, event, latents, prediction))
        self.flush(keep=self.lag)

    def flush(self, keep: int = 0) -> None:
        """Read the answers of all but the last ``keep`` steps; raise ``NonFiniteError`` at the first bad one."""
        while len(self.pending) > keep:
            step, flag, event, latents, prediction = self.pending.pop(0)
            if event is not None:
                event.synchronize()  # waits for that step only, not for the steps queued after it
            if not bool(flag):
                self.pending.clear()
                check_finite(latents, prediction, step, self.steps, self.guidance)
