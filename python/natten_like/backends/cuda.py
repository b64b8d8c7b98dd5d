"""CUDA backend: the fused kernels of ``csrc/generated`` (the ``natten_like`` ops' CUDA implementations).

Kernel families (``cuda_kernels()`` lists what a build holds; ``NATTEN_LIKE_CUDA_ARCH`` decides it, and without it the
backend refuses with "no CUDA kernels are built yet"):

- ``sm80_gna_fwd``: GNA / dense forward on every GPU of compute capability 8.0 or newer (cp.async + mma.sync);
- ``sm80_gna_bwd``: its backward (dQ, dK, dV; deterministic), used by autograd after any forward kernel;
- ``sm80_block_sparse_fwd``, ``sm80_s2_fwd`` and ``_bwd``: block-sparse and strided-shard forward and backward (the
  same kernels, other schedules);
- ``sm80_latent_fwd``: MLA decode (D 576 / D_v 512, split-KV, paged); ``sm90_latent_fwd`` its Hopper version (TMA +
  wgmma), taken on compute capability 9.x where its TMA views express the problem;
- ``sm90_gna_fwd``: the Hopper GNA / dense forward (TMA + wgmma, warp-specialised), built when the arch list names
  ``9.0a``; taken on compute capability 9.x when it has a kernel for the dtype and head dim and the problem fits its
  TMA boxes, otherwise the sm80 kernel runs.

None of them has been verified on a GPU yet (issues 5 and 7), so the backend accepts a problem only when
``NATTEN_LIKE_EXPERIMENTAL_CUDA=1`` is set; otherwise it refuses, saying so, and the flex / reference backends take CUDA
tensors. What the kernels run: float16 / bfloat16, the built head dims (``D_v == D``, and for the sm80 kernels, forward
and backward, and the sm90 forwards also D 192 / D_v 128), GQA, and for GNA additional KV, fused into the same softmax
(sm80 and sm90 forward, sm80 backward). The compute capability of the tensors' own GPU is checked when a kernel is about
to run (the problem names only the device type); an opted-in call it rules out raises ``BackendNotSupportedError``.

Tile shapes come from the one table, ``simulator/tile_configs.py`` (``GNA_TILES["sm80"]`` / ``["sm90"]``), clamped to
the problem; the 1-D families run on the same CTA block (``cta_block``).
"""

from __future__ import annotations

import math
import os

import torch

from simulator.tile_configs import clamp_tile, cta_block, gna_tiles

from .. import ops
from .._validation import AttentionParams, GnaParams
from . import BackendNotSupportedError, Problem, register_backend

EXPERIMENTAL_ENV = "NATTEN_LIKE_EXPERIMENTAL_CUDA"
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z
# "off": the sm80 kernels run even on Hopper (the bindings read it too, for every family); tests and benchmarks.
SM90_ENV = "NATTEN_LIKE_SM90"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)
# The sm90 kernel's TMA boxes (sm90/tma_gna_box.hpp): a dilated tile is one box of extent tile * dilation (at most 256)
# with element stride = dilation (at most 8); batch and the outermost token dim share one int32 coordinate.
SM90_MAX_DILATION = 8
SM90_MAX_BOX_EXTENT = 256
# Shared memory per block of the sm80 kernels at head dim 256, rounded up: the forward (Q, K, V tiles of 64 x 256, K/V
# rows padded; FwdSmem in sm80_fmha_fwd_kernel.hpp) and the backward's dK/dV kernel (K, V, Q, dO tiles, rows padded,
# and the P^T hand-over; DkDvSmem in sm80_fmha_bwd_kernel.hpp). More than sm86 / sm89 / sm120 GPUs allow a block.
SM80_HD256_SMEM = 105 * 1024
SM80_HD256_BWD_SMEM = 147 * 1024
# The sm80 MLA decode kernel (sm80_latent_kernel.hpp): Q and K tiles of 64 x 576, P 64 x 64, row state; exactly
# sizeof(Sm80LatentTraits::SharedStorage), which tests/test_sm80_latent_host.py compiles and compares.
SM80_LATENT_SMEM = 157824


def smem_reasons(problem: Problem, need: int, what: str) -> list[str]:
    """A reason when the problem's GPU allows a block less than ``need`` bytes of shared memory (opt-in)."""
    if problem.device_type != "cuda" or not torch.cuda.is_available():
        return []
    optin = torch.cuda.get_device_properties(problem.device_index).shared_memory_per_block_optin
    if optin >= need:
        return []
    return [f"{what} needs {need} bytes of shared memory per block; this GPU allows {optin} (sm80 / sm90 class GPUs "
            "have enough)"]  # fmt: skip


def _built_kernels() -> frozenset[tuple[str, torch.dtype, int, int]]:
    if ops.EXTENSION_ERROR is not None or not hasattr(torch.ops.natten_like, "cuda_kernels"):
        return frozenset()
    kinds, dtypes, head_dims, head_dims_v = torch.ops.natten_like.cuda_kernels()
    rows = zip(kinds, dtypes, head_dims, head_dims_v, strict=True)
    return frozenset((kind, getattr(torch, name), hd, hd_v) for kind, name, hd, hd_v in rows)


# Read once at import: the op returns lists, which torch.compile cannot trace, and dispatch runs inside traced code.
BUILT_KERNELS = _built_kernels()


def built_kernels(kind: str | None = None) -> frozenset[tuple[torch.dtype, int, int]]:
    """(dtype, head dim D of q / k, head dim D_v of v / out) of every CUDA kernel of family ``kind`` in the extension
    (default: GNA forward kernels of any arch); empty for a CPU-only build. Families: see ``cuda_kernels()``."""
    kinds = (kind,) if kind else ("sm80_gna_fwd", "sm90_gna_fwd")
    return frozenset((dt, hd, hd_v) for k, dt, hd, hd_v in BUILT_KERNELS if k in kinds)


def _device_reasons(device: torch.device | None = None) -> list[str]:
    if not torch.cuda.is_available():
        return ["no CUDA device is available"]
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return [f"the GPU has compute capability {major}.{minor}; the CUDA kernels need 8.0 or newer"]
    return []


def _common_reasons(problem: Problem) -> list[str]:
    reasons = []
    if ops.EXTENSION_ERROR is not None:
        reasons.append(ops.EXTENSION_ERROR)
    elif not BUILT_KERNELS:
        reasons.append("no CUDA kernels are built yet")
    if problem.device_type != "cuda":
        reasons.append(f"tensors are not on a CUDA device (they are on {problem.device_type})")
    else:
        reasons += _device_reasons(problem.device_index)
    # Every kernel's grid has one y slot per head and one z slot per batch entry (latent: per split and batch entry).
    if problem.batch > MAX_GRID_YZ:
        reasons.append(f"batch {problem.batch} is above {MAX_GRID_YZ}, the kernels' grid limit (one CTA row per entry)")
    if problem.heads > MAX_GRID_YZ:
        reasons.append(f"{problem.heads} heads are above {MAX_GRID_YZ}, the kernels' grid limit (one CTA row per head)")
    if problem.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {problem.dtype} is not supported (float16 and bfloat16 only)")
    if os.environ.get(EXPERIMENTAL_ENV) != "1":
        reasons.append(f"the CUDA kernels are not yet verified on a GPU; set {EXPERIMENTAL_ENV}=1 to use them")
    return reasons


def _head_dim_reasons(problem: Problem, kind: str = "sm80_gna_fwd") -> list[str]:
    params = problem.params
    dims = (params.head_dim, params.head_dim_v)
    reasons = []
    # The sm80 forward is the fallback every problem needs (the sm90 one declines some problems at run time).
    built = sorted((hd, hd_v) for dt, hd, hd_v in built_kernels(kind) if dt == problem.dtype)
    if dims not in built:
        reasons.append(f"head dims (D, D_v) = {dims} have no kernel (built for {problem.dtype}: {built})")
    if params.head_dim >= 256:
        need = SM80_HD256_BWD_SMEM if problem.requires_grad else SM80_HD256_SMEM
        reasons += smem_reasons(problem, need, f"head dim {params.head_dim}")
    if problem.requires_grad and kind == "sm80_gna_fwd":
        built_bwd = sorted((hd, hd_v) for dt, hd, hd_v in built_kernels("sm80_gna_bwd") if dt == problem.dtype)
        if dims not in built_bwd:
            reasons.append(
                f"inputs require grad and head dims (D, D_v) = {dims} have no backward kernel "
                f"(built for {problem.dtype}: {built_bwd})"
            )
    return reasons


def check_device(problem: Problem, device: torch.device) -> None:
    # A problem built without a device index (the profiler's) names only the device type: on a machine mixing GPU
    # generations the capability of the tensors' own GPU is only known here. Raised, never a silent switch, so a
    # forced backend="cuda" runs here or fails.
    reasons = _device_reasons(device)
    if reasons:
        message = f"backend 'cuda' cannot run this {problem.family} problem: " + "; ".join(reasons)
        raise BackendNotSupportedError(message)


def sm90_reasons(params: GnaParams, dtype: torch.dtype, device: torch.device | None = None) -> list[str]:
    """Why the sm90 forward kernel would not take this problem (empty: it would); the sm80 kernel runs instead."""
    reasons = []
    if os.environ.get(SM90_ENV, "") not in ("", "on", "off"):  # as the bindings read it
        raise ValueError(f"{SM90_ENV} must be on or off, got {os.environ[SM90_ENV]!r}")
    if os.environ.get(SM90_ENV) == "off":
        reasons.append(f"{SM90_ENV}=off keeps every family on the sm80 kernels")
    if (dtype, params.head_dim, params.head_dim_v) not in built_kernels("sm90_gna_fwd"):
        reasons.append(f"no sm90 kernel built for {dtype} and head dims {params.head_dim} / {params.head_dim_v}")
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] != 9:
        reasons.append("the GPU is not a compute capability 9.x (Hopper)")
    if max(params.dilation) > SM90_MAX_DILATION:
        reasons.append(f"dilation {max(params.dilation)} > {SM90_MAX_DILATION} (TMA element strides)")
    tiles = gna_tiles("sm90", params.rank, params.head_dim)
    q_tile, kv_tile = (clamp_tile(t, params.shape, params.dilation) for t in tiles)
    extents = [max(a, b) * d for a, b, d in zip(q_tile, kv_tile, params.dilation, strict=True)]
    if max(extents) > SM90_MAX_BOX_EXTENT:
        reasons.append(f"a TMA box extent (tile x dilation) of {max(extents)} > {SM90_MAX_BOX_EXTENT}")
    if params.shape[0] + extents[0] >= 2**31:
        reasons.append("the outermost token dim plus a box reaches 2^31 (int32 TMA coordinates)")
    additional_tiles = -(-params.num_additional // cta_block("sm90", params.head_dim)[1])
    if math.prod(params.shape) + additional_tiles >= 2**31:
        reasons.append("tokens per batch entry plus additional KV tiles reach 2^31 (int32 KV tile counts)")
    return reasons


def _target(problem: Problem, q: torch.Tensor) -> str:
    params: GnaParams = problem.params if problem.family == "gna" else problem.params.as_gna()
    return "sm80" if sm90_reasons(params, problem.dtype, q.device) else "sm90"


def gna_not_supported_reasons(problem: Problem) -> list[str]:
    return _common_reasons(problem) + _head_dim_reasons(problem)


def run_gna(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additional_keys: torch.Tensor | None,
    additional_values: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as in :func:`natten_like.gna`. Returns (out [B, *tokens, H, D], lse [B, *tokens, H] float32)."""
    check_device(problem, q.device)
    return ops.gna_forward(_target(problem, q), q, k, v, additional_keys, additional_values, problem.params)


def attention_not_supported_reasons(problem: Problem) -> list[str]:
    reasons = _common_reasons(problem) + _head_dim_reasons(problem)
    params: AttentionParams = problem.params
    if params.num_q != params.num_kv:
        reasons.append(f"N_q ({params.num_q}) != N_kv ({params.num_kv}): only self-attention shapes run here")
    return reasons


def run_attention(
    problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense self-attention as 1-D GNA with window = N. q [B, N, H, D], k/v [B, N, H_kv, D] -> (out, lse)."""
    check_device(problem, q.device)
    params: AttentionParams = problem.params
    return ops.gna_forward(_target(problem, q), q, k, v, None, None, params.as_gna())


# The sm80 kernels' CTA block (query rows, key rows): the tile table's, as the generator gives it to the kernels.
SM80_BLOCK_M, SM80_BLOCK_N = cta_block("sm80")


def strided_shard_not_supported_reasons(problem: Problem) -> list[str]:
    """Reasons of the S2 forward kernel (sm80_s2_fwd); the family's problem comes from natten_like.strided_shard."""
    reasons = _common_reasons(problem) + _head_dim_reasons(problem, "sm80_s2_fwd")
    params = problem.params
    dims = (problem.dtype, params.head_dim, params.head_dim_v)
    if problem.requires_grad and dims not in built_kernels("sm80_s2_bwd"):
        reasons.append(f"inputs require grad and head dims {dims[1:]} have no strided-shard backward kernel")
    for block in (SM80_BLOCK_M, SM80_BLOCK_N):
        if params.block_size > block and params.block_size % block:
            reasons.append(f"block_size {params.block_size} is neither <= {block} nor a multiple of it")
    if params.num_kv >= 2**31:
        reasons.append(f"N_kv ({params.num_kv}) must be below 2^31")
    return reasons


def block_sparse_not_supported_reasons(problem: Problem) -> list[str]:
    """Reasons of the block-sparse forward kernel (sm80_block_sparse_fwd); the problem comes from
    natten_like.block_sparse."""
    reasons = _common_reasons(problem) + _head_dim_reasons(problem, "sm80_block_sparse_fwd")
    params = problem.params
    dims = (problem.dtype, params.head_dim, params.head_dim_v)
    if problem.requires_grad and dims not in built_kernels("sm80_block_sparse_bwd"):
        reasons.append(f"inputs require grad and head dims {dims[1:]} have no block-sparse backward kernel")
    for name, size, block in (("q_block", params.q_block, SM80_BLOCK_M), ("kv_block", params.kv_block, SM80_BLOCK_N)):
        if size > block and size % block:
            reasons.append(f"{name} {size} is neither <= {block} nor a multiple of it")
    return reasons


register_backend("gna", "cuda", gna_not_supported_reasons, run_gna)
register_backend("attention", "cuda", attention_not_supported_reasons, run_attention)
