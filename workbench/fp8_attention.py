"""fp8 joint attention: cuDNN's fused fp8 SDPA on Hopper (``perf.attention_kernel=fp8_cudnn``), and the same
arithmetic in plain torch on any device (``fp8_emulated``: what fp8 attention does to an image, measurable on
the CPU's tiny model, and the reference the cuDNN path is tested against).

Why by hand: torch's SDPA has no fp8 path, FlashAttention-3's fp8 kernel has no PyPI wheel, and SageAttention
measured slower than cuDNN's bf16 attention at these sizes (benchmarks/README.md). cuDNN's fp8 flash attention
ships with the cuDNN that torch already loads; ``nvidia-cudnn-frontend`` (NVIDIA's Python graph API, MIT) is
the only way to reach it from Python.

Scaling (cuDNN's fp8 SDPA takes one scale per tensor): q, k and v are each scaled so that their absolute
maximum lands on e4m3's largest value (448). The softmax probabilities P are in [0, 1] and are scaled by 448
before their fp8 cast. The output O is a convex combination of v's rows, so ``|O| <= amax(v)`` and O reuses
v's scale. On Hopper cuDNN writes O in fp8 (bf16 output is Blackwell only); it is dequantised here, where
TorchInductor fuses it with the copies around the op.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import torch

E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn


class Fp8AttentionError(RuntimeError):
    pass


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (fp8 x * scale, float32 descale of shape (1, 1, 1, 1)), scale = 448 / amax(x).

    The clamp keeps float32 rounding from pushing the maximum past 448, which e4m3fn (no infinity) would
    turn into NaN; an all-zero tensor gets scale 1."""
    amax = x.detach().abs().amax().float()
    scale = torch.where(amax > 0, E4M3_MAX / amax, torch.ones_like(amax))
    x8 = (x.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return x8, (1.0 / scale).reshape(1, 1, 1, 1)


def sdpa_fp8_emulated(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                      descale_k: torch.Tensor, descale_v: torch.Tensor) -> torch.Tensor:
    """cuDNN's fp8 SDPA forward in float32 torch ops: (B, S, H, D) fp8 q / k / v and their descales -> fp8 O.

    As cuDNN: S = q k^T (fp32 accumulation) * descales * 1/sqrt(D); P = exp(S - rowmax) in fp32, cast to fp8 at
    scale 448 for the P @ v product; the row sums come from the fp32 P; O is cast to fp8 at v's scale. It predicts
    cuDNN's error, not its bits: cuDNN's online softmax rescales P per tile, and where the two differ slightly
    O's fp8 rounding flips by a step (H200: both 13.8 % from float32 attention, 3.0-3.4 % from each other;
    tests/test_fp8_attention.py). One head at a time: S is (S x S) floats."""
    d = q8.shape[-1]
    qk_scale = (descale_q * descale_k).reshape(()) / math.sqrt(d)
    heads = []
    for h in range(q8.shape[2]):
        q, k, v = (t[:, :, h].float() for t in (q8, k8, v8))
        s = torch.einsum("bqd,bkd->bqk", q, k) * qk_scale
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        row_sum = p.sum(dim=-1, keepdim=True)
        p8 = (p * E4M3_MAX).to(FP8).float()
        heads.append(torch.einsum("bqk,bkd->bqd", p8, v) * (descale_v.reshape(()) / E4M3_MAX) / row_sum)
    o = torch.stack(heads, dim=2)  # (B, S, H, D), float32
    return (o / descale_v.reshape(())).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


# ----------------------------------------------------------------------------- cuDNN, through its frontend
class _CudnnGraphs:
    """One built cuDNN graph per (shape, device): building one takes cuDNN's heuristics (milliseconds to a
    second), a forward runs 60 blocks of the same shape. Each text length of a template grid builds once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._graphs: dict[tuple, tuple] = {}
        self._handles: dict[int, object] = {}
        self._constants: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def handle(self, cudnn, device: torch.device):
        if device.index not in self._handles:
            self._handles[device.index] = cudnn.create_handle()
        return self._handles[device.index]

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale_s, descale_s) on the device: P's fixed fp8 scale and its inverse."""
        if device.index not in self._constants:
            self._constants[device.index] = (torch.full((1, 1, 1, 1), E4M3_MAX, device=device),
                                             torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, device=device))
        return self._constants[device.index]

    def get(self, shape: tuple[int, int, int, int], device: torch.device):
        key = (shape, device.index)
        with self._lock:
            if key not in self._graphs:
                self._graphs[key] = self._build(shape, device)
            return self._graphs[key]

    def _build(self, shape, device):
        cudnn = import_cudnn()
        b, s, h, d = shape
        handle = self.handle(cudnn, device)
        e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
        dims, strides = [b, h, s, d], [s * h * d, d, h * d, 1]  # (B, H, S, D) dims over (B, S, H, D) memory
        q, k, v = (graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in ("q", "k", "v"))
        scalars = [graph.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
                   for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")]
        o, _, amax_s, amax_o = graph.sdpa_fp8(q, k, v, *scalars, generate_stats=False, attn_scale=1.0 / math.sqrt(d),
                                              use_causal_mask=False, name="joint_attention")
        o.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
        try:
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            graph.check_support()
            graph.build_plans()
        except Exception as err:  # cudnnGraphNotSupportedError and friends: name the shape and the fix
            raise Fp8AttentionError(
                f"cuDNN cannot run fp8 attention for (batch {b}, tokens {s}, heads {h}, head dim {d}) on "
                f"{torch.cuda.get_device_name(device)}: {err}. Use perf.attention_kernel=sdpa") from err
        tensors = (q, k, v, *scalars, o, amax_s, amax_o)
        return graph, tensors, graph.get_workspace_size()


_GRAPHS = _CudnnGraphs()


def import_cudnn():
    try:
        import cudnn
    except ImportError as err:
        raise Fp8AttentionError(
            "perf.attention_kernel=fp8_cudnn needs NVIDIA's cuDNN frontend: pip install "
            "'qwen-image-workbench[fp8-attention]' (nvidia-cudnn-frontend), or use perf.attention_kernel=sdpa") from err
    return cudnn


@torch.library.custom_op("workbench::sdpa_fp8_cudnn", mutates_args=())
def sdpa_fp8_cudnn(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
                   descale_k: torch.Tensor, descale_v: torch.Tensor) -> torch.Tensor:
    """``sdpa_fp8_emulated``'s contract on cuDNN's fused kernel. A custom op: opaque to TorchInductor, which
    fuses the quantisation before it and the dequantisation after it."""
    cudnn = import_cudnn()
    q8, k8, v8 = (t.contiguous() for t in (q8, k8, v8))
    graph, tensors, workspace_bytes = _GRAPHS.get(tuple(q8.shape), q8.device)
    handle = _GRAPHS.handle(cudnn, q8.device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    scale_s, descale_s = _GRAPHS.constants(q8.device)
    out = torch.empty_like(q8)
    amax = torch.empty(2, 1, 1, 1, device=q8.device)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=q8.device)
    buffers = (q8, k8, v8, descale_q, descale_k, descale_v, descale_s, scale_s, 1.0 / descale_v, out, amax[0:1], amax[1:2])
    graph.execute(dict(zip(tensors, buffers)), workspace, handle=handle)
    return out


@sdpa_fp8_cudnn.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v):
    return torch.empty_like(q8, memory_format=torch.contiguous_format)


def fp8_joint_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str) -> torch.Tensor:
    """Unmasked attention on (B, S, H, D) tensors through fp8: quantise per tensor, run ``kernel``
    (``fp8_cudnn`` or ``fp8_emulated``), dequantise to the input dtype. Same layout contract as
    ``workbench.perf.joint_attention``."""
    (q8, dq), (k8, dk), (v8, dv) = (quantize_per_tensor(t) for t in (query, key, value))
    op = sdpa_fp8_cudnn if kernel == "fp8_cudnn" else sdpa_fp8_emulated
    return (op(q8, k8, v8, dq, dk, dv).float() * dv).to(query.dtype)


def check_fp8_cudnn(device: str) -> Optional[str]:
    """Why ``fp8_cudnn`` cannot run on ``device`` (None: it can). Checked before any model loads."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return (f"perf.attention_kernel=fp8_cudnn runs on an NVIDIA GPU (Hopper or newer); this run's device is "
                f"{device!r}. Use perf.attention_kernel=fp8_emulated to see fp8 attention's effect on this device, "
                "or perf.attention_kernel=sdpa")
    if not torch.cuda.is_available():
        return f"perf.attention_kernel=fp8_cudnn: device {device!r}, but torch sees no CUDA device"
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 9:
        return (f"perf.attention_kernel=fp8_cudnn needs compute capability 9.0 or newer (Hopper); "
                f"{torch.cuda.get_device_name(dev)} is {major}.{minor}. Use perf.attention_kernel=sdpa")
    try:
        import_cudnn()
    except Fp8AttentionError as err:
        return str(err)
    return None
