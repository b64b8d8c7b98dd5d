#!/usr/bin/env bash
# The GPU check of the CUDA paths (issues 5 and 7), in one run of a few minutes on a GPU machine: build the extension for this
# GPU's arch, run the CUDA tests against the float64 reference, benchmark, print a short table last.
#
#   bash bench/gpu_check.sh [all|build|test|sanitize]   # logs under $OUT when set (the device tool's output folder),
#                                                        # else bench/out
#
# `all` (the default) is one run; `build` then `test` split it in two device calls (the build survives only while the
# machine stays warm, about 30 s after a call), so that a call that runs out of time costs half the run. `sanitize`
# runs bench/gpu_smoke.py under compute-sanitizer (which `all` and `test` also do when a test fails).
# Needs nvcc, torch with CUDA and the nvidia-cutlass==4.2.0.0 headers: installed, or as a wheel in .whl/ (a machine
# without network: `pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl` beforehand). The benchmark: dense bf16
# hd128 forward at 16K tokens against torch SDPA (FlashAttention / cuDNN inside torch), and fully block-sparse GNA
# configs against each path's own dense kernel, with the simulator's tile bound beside each (bench/gpu_bench.py).
#
# Prebuilt kernels: the kernel units include no torch header, so they can be compiled ahead on a machine without a GPU,
#   NATTEN_LIKE_CUDA_ARCH=9.0a NATTEN_LIKE_DTYPES=bf16 MAX_JOBS=2 python setup.py build_kernels --out build/kernels
# and carried (`build/kernels` beside `.whl`): the build here then compiles only the torch bindings and links those
# objects, if their manifest matches this checkout and build exactly (setup.py checks a hash of every kernel source);
# otherwise, or if that build fails, it says why and compiles everything.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
LOG="${OUT:-bench/out}"
PHASE="${1:-all}"
case "$PHASE" in all | build | test | sanitize) ;;
*) echo "gpu_check: phase must be all, build, test or sanitize, got '$PHASE'" >&2; exit 2 ;; esac
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

# The GPU's own arch; on Hopper the 9.0a target, which adds the sm90 kernels to the sm80 ones.
ARCH="$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print("%d.%d%s" % (*c, "a" if c[0] == 9 else ""))')" || exit 1
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
# Every bfloat16 instantiation (the fp16 ones differ only in the MMA atom's input type; NATTEN_LIKE_DTYPES=bf16,fp16
# builds both, about twice the build time). At most 12 jobs: an sm90 unit takes up to ~10 GB to compile.
export NATTEN_LIKE_DTYPES="${NATTEN_LIKE_DTYPES:-bf16}"
jobs=$(nproc)
[ "$jobs" -gt 12 ] && jobs=12
build_s=0
if [ "$PHASE" = all ] || [ "$PHASE" = build ]; then
  echo "== build for sm_${ARCH/./}, every ${NATTEN_LIKE_DTYPES} instantiation (CUDA_HOME=$CUDA_HOME)"
  start=$(date +%s)
  built=0
  if [ -f build/kernels/manifest.json ]; then
    echo "   linking the prebuilt kernel objects of build/kernels"
    if NATTEN_LIKE_KERNEL_OBJECTS=build/kernels NATTEN_LIKE_CUDA_ARCH="$ARCH" MAX_JOBS="${MAX_JOBS:-$jobs}" \
      "$PY" setup.py -q build_ext --inplace >"$LOG/build_prebuilt.log" 2>&1 &&
      "$PY" -c 'import sys; sys.path.insert(0, "python"); import torch, natten_like._C' >>"$LOG/build_prebuilt.log" 2>&1; then
      built=1
    else
      grep -m1 "NATTEN_LIKE_KERNEL_OBJECTS=" "$LOG/build_prebuilt.log" || tail -5 "$LOG/build_prebuilt.log"
      echo "   the prebuilt objects do not fit this build or machine: compiling every unit"
    fi
  fi
  if [ "$built" -eq 0 ] && ! NATTEN_LIKE_CUDA_ARCH="$ARCH" MAX_JOBS="${MAX_JOBS:-$jobs}" "$PY" setup.py -q build_ext \
    --inplace >"$LOG/build.log" 2>&1; then
    tail -40 "$LOG/build.log"
    exit 1
  fi
  build_s=$(($(date +%s) - start))
  echo "built in ${build_s}s$([ "$built" -eq 1 ] && echo " (prebuilt kernel objects)")"
  [ "$PHASE" = build ] && exit 0
elif ! compgen -G "python/natten_like/_C*.so" >/dev/null; then
  echo "gpu_check: phase $PHASE needs the extension built in place (run phase build first, on the same machine)" >&2
  exit 1
fi
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# One small problem per kernel (bench/gpu_smoke.py) under compute-sanitizer's memcheck: the kernel and the access at
# fault, where a test failed. Run after failing tests, or alone as phase `sanitize`.
sanitize() {
  local cs
  cs="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
  [ -x "$cs" ] || { echo "gpu_check: no compute-sanitizer at $cs"; return 1; }
  echo "== compute-sanitizer memcheck of bench/gpu_smoke.py"
  timeout -k 10 "${NATTEN_LIKE_SANITIZE_TIMEOUT:-240}" "$cs" --tool memcheck --error-exitcode 3 --print-limit 20 \
    "$PY" bench/gpu_smoke.py 2>&1 | tee "$LOG/sanitize.log"
  return "${PIPESTATUS[0]}"
}
if [ "$PHASE" = sanitize ]; then
  sanitize
  exit $?
fi

echo "== CUDA tests"
# Every family's GPU tests against the float64 reference. Not here, to keep the device time for what needs the GPU:
# the host tests of the kernels' index logic and the SASS checks (tests/test_cuda_build.py: CI's minimal build; the
# same nvcc gives the same SASS, so for the full set run it where build_kernels ran), and the backward's standalone
# kernel check (`pytest tests/test_sm80_bwd_host.py -k gpu`, no torch in the loop; it compiles for a minute). A kernel
# that hangs (say, a transaction count its TMA loads never meet) must cost one file, not the device call: each file
# runs in its own process under a time limit, and pytest-timeout, where installed, ends a hung test and prints every
# thread's stack.
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout="${NATTEN_LIKE_TEST_TIMEOUT:-120}" --timeout-method=thread)
gpu_tests=(tests/test_gna_cuda.py tests/test_strided_shard_cuda.py tests/test_block_sparse_cuda.py tests/test_latent_cuda.py
  tests/test_sparse_bwd_cuda.py tests/test_nonfinite.py)
tests_rc=0
: >"$LOG/tests.log"
for t in "${gpu_tests[@]}"; do
  timeout -k 10 "${NATTEN_LIKE_FILE_TIMEOUT:-300}" "$PY" -m pytest -q -rs "${per_test[@]}" "$t" 2>&1 | tee -a "$LOG/tests.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -ge 124 ] && echo "gpu_check: $t stopped at its time limit (rc $rc)" | tee -a "$LOG/tests.log"
  [ "$rc" -eq 0 ] || tests_rc=1
done

[ "$tests_rc" -eq 0 ] || sanitize

echo "== benchmark"
timeout -k 10 "${NATTEN_LIKE_BENCH_TIMEOUT:-300}" "$PY" bench/gpu_bench.py 2>&1 | tee "$LOG/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "build ${build_s}s, tests rc ${tests_rc}, benchmark rc ${bench_rc}"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
