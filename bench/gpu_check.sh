#!/usr/bin/env bash
# The GPU check of the CUDA path (issue 5), in one run of a few minutes on a GPU machine: build the extension for this
# GPU's arch, run the CUDA tests against the float64 reference, benchmark, print a short table last.
#
#   bash bench/gpu_check.sh            # logs under $OUT when set (the device tool's output folder), else bench/out
#
# Needs nvcc, torch with CUDA and the nvidia-cutlass==4.2.0.0 headers: installed, or as a wheel in .whl/ (a machine
# without network: `pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl` beforehand). The benchmark: dense bf16
# hd128 forward at 16K tokens against torch SDPA (FlashAttention / cuDNN inside torch), and fully block-sparse GNA
# configs against this path's own dense kernel, with the simulator's tile bound beside each.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
LOG="${OUT:-bench/out}"
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 NATTEN_LIKE_EXPERIMENTAL_CUDA=1

if ! "$PY" -c "import cutlass_library" 2>/dev/null; then
  shopt -s nullglob
  wheels=(.whl/nvidia_cutlass-*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_check: nvidia-cutlass is not installed and .whl/ holds no nvidia_cutlass wheel" >&2
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/natten_like_site "${wheels[@]}" || exit 1
  export PYTHONPATH="/tmp/natten_like_site${PYTHONPATH:+:$PYTHONPATH}"
fi

ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" || exit 1
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
echo "== build for sm_${ARCH/./} (CUDA_HOME=$CUDA_HOME)"
start=$(date +%s)
if ! NATTEN_LIKE_CUDA_ARCH="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py -q build_ext --inplace \
  >"$LOG/build.log" 2>&1; then
  tail -40 "$LOG/build.log"
  exit 1
fi
build_s=$(($(date +%s) - start))
echo "built in ${build_s}s"
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== CUDA tests"
"$PY" -m pytest -q -rs tests/test_cuda_build.py tests/test_gna_cuda.py 2>&1 | tee "$LOG/tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmark"
"$PY" - "$build_s" "$tests_rc" <<'EOF' 2>&1 | tee "$LOG/bench.log"
import math
import sys

import natten_like  # noqa: F401
import torch
import torch.nn.functional as F
from simulator.gna import simulate_gna
from simulator.tile_configs import clamp_tile, gna_tiles

torch.manual_seed(0)
dev = "cuda"


def median_ms(fns, reps=10, warmup=3):
    """Median time of each fn, run in alternation so clock and thermal drift hit all alike."""
    times = [[] for _ in fns]
    for i in range(warmup + reps):
        for j, fn in enumerate(fns):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times[j].append(a.elapsed_time(b))
    return [sorted(t)[len(t) // 2] for t in times]


def gna_fn(q, k, v, shape, window, stride):
    rank = len(shape)
    qt, kt = gna_tiles("sm80", rank)
    ones = (1,) * rank
    args = (list(window), list(stride), list(ones), [False] * rank, q.shape[-1] ** -0.5,
            list(clamp_tile(qt, shape, ones)), list(clamp_tile(kt, shape, ones)))
    return lambda: torch.ops.natten_like.gna_forward(q, k, v, None, None, *args)


rows = []
B, H, D, N = 1, 16, 128, 16384
q, k, v = (torch.randn(B, N, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # SDPA's [B, H, N, D], outside the timing
ours = gna_fn(q, k, v, (N,), (N,), (1,))
sdpa = lambda: F.scaled_dot_product_attention(qt, kt, vt)  # noqa: E731
t_ours, t_sdpa = median_ms([ours, sdpa])
flops = 4 * B * H * N * N * D
rows.append(("dense bf16 hd128 N=16384", f"{flops / t_ours / 1e9:.0f} TFLOP/s", f"SDPA {flops / t_sdpa / 1e9:.0f} TFLOP/s",
             f"{t_sdpa / t_ours:.2f}x SDPA", "target >= 280 TFLOP/s on H100/H200"))
err = (ours()[0].float() - sdpa().transpose(1, 2).float()).abs().max().item()
rows.append(("dense max |ours - SDPA|", f"{err:.2e}", "", "", ""))

for shape, window in (((16384,), (512,)), ((128, 128), (16, 16)), ((32, 32, 16), (8, 8, 8))):
    stride = window  # blocked: every visited tile full
    n = math.prod(shape)
    q, k, v = (torch.randn(B, *shape, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    sim = simulate_gna(shape, window, stride, arch="sm80", flattened=False, suggest=False, heads=H, head_dim=D)
    t_sparse, t_dense = median_ms([gna_fn(q, k, v, shape, window, stride), gna_fn(q, k, v, shape, shape, (1,) * len(shape))])
    speedup = t_dense / t_sparse
    name = f"GNA {'x'.join(map(str, shape))} w{'x'.join(map(str, window))} blocked"
    rows.append((name, f"{speedup:.1f}x own dense", f"tile bound {sim.tiles.tile_bound:.1f}x",
                 f"{speedup / sim.tiles.tile_bound:.0%} of bound", f"fully block-sparse: {sim.tiles.fully_block_sparse}"))

print()
print(f"GPU {torch.cuda.get_device_name()}  torch {torch.__version__}  build {sys.argv[1]} s  tests rc {sys.argv[2]}")
for r in rows:
    print("  " + " | ".join(f"{c:<28}" for c in r))
EOF
bench_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
