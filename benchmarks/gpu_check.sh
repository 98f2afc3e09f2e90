#!/usr/bin/env bash
# One GPU check, in about 5 minutes: GPU tests, NCCL at world size 1, the MPI backend with CuPy
# arrays at world size 2 (both ranks on the one GPU: NCCL refuses that), the MPI suites of DDP and
# ZeRO with the GPU as default device, and bench_gpu.py (ddp vs torch CUDA eager).
# Every stage runs even if an earlier one failed; a summary follows; exit 1 if any failed.
# Run from the repo root with a python3 that has CuPy and torch (no venv, no network needed):
#     bash benchmarks/gpu_check.sh
# Optional: wheels of mpi4py, mpich and pytest-mpi in .whl/ are installed to /tmp/ddp-mpi when
# that python lacks a working mpi4py + mpiexec or pytest-mpi; with $OUT set (the device tool),
# logs, junit XML, a profile and CuPy's kernel cache are written there; a cache tarball at
# .gpucache/cupy_cache.tgz is unpacked first (it saves the kernel compiles of a previous run).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
OUTDIR="${OUT:-$TMP/out}"
mkdir -p "$OUTDIR"
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-$TMP/cupy_cache}"
mkdir -p "$CUPY_CACHE_DIR"
if [ -f .gpucache/cupy_cache.tgz ]; then
  tar -xzf .gpucache/cupy_cache.tgz -C "$CUPY_CACHE_DIR" && echo "unpacked CuPy kernel cache"
fi
declare -a NAMES=() RESULTS=()

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo; echo "=== $name ==="
  local start=$SECONDS
  timeout -k 5 "$limit" "$@"
  local rc=$?
  local verdict="PASS"
  [ "$rc" -ne 0 ] && verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))"
  NAMES+=("$name"); RESULTS+=("$verdict ($((SECONDS - start)) s)")
}

# MPI: the python's own mpi4py + mpiexec when they work, else the carried wheels.
mpi_ok() { command -v mpiexec >/dev/null && "$PY" -c "from mpi4py import MPI" 2>/dev/null \
  && "$PY" -c "import pytest_mpi" 2>/dev/null; }
if ! mpi_ok && ls .whl/mpi4py-*.whl >/dev/null 2>&1; then
  echo "installing the carried MPI wheels into /tmp/ddp-mpi"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/ddp-mpi .whl/*.whl
  SITE="$(echo /tmp/ddp-mpi/lib/python3*/site-packages)"
  export PATH="/tmp/ddp-mpi/bin:$PATH" PYTHONPATH="$PYTHONPATH:$SITE"
  export LD_LIBRARY_PATH="/tmp/ddp-mpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
TIMEOUT_OPT=""
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT="--timeout=60"

stage "environment" 60 "$PY" - <<'PY'
import sys
import numpy, cupy
print("python", sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__)
from cupy.cuda import nccl
print("GPUs:", cupy.cuda.runtime.getDeviceCount(), "nccl:", nccl.available)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as exc:
    print("torch: not importable:", exc)
from mpi4py import MPI
print("MPI:", MPI.Get_library_version().splitlines()[0])
import ddp
assert ddp.cuda.is_available(), ddp.backend.cupy_unavailable_reason()
print("device:", ddp.cuda.get_device_name())
PY

# The GPU host's CPU is another x86-64 (often AVX-512): the CPU tolerance tests must hold there
# too (docs/testing.md). The CPU features seen are printed first.
stage "CPU tolerance tests on this host's CPU" 120 bash -c '"$0" -c "import numpy; \
numpy.show_runtime()" | head -40; "$0" -m pytest -q -p no:cacheprovider \
tests/test_parallel_kernels.py tests/test_nn_functional.py tests/test_ops.py 2>&1 | tail -5; \
exit ${PIPESTATUS[0]}' "$PY"

# All-skipped would "pass": require a GPU first.
stage "gpu tests (pytest -m gpu tests/gpu)" 180 bash -c '"$0" -c "import ddp, sys; \
sys.exit(0 if ddp.cuda.is_available() else 1)" && "$0" -m pytest -q -m gpu tests/gpu \
-p no:cacheprovider -rs --tb=short $1 --junitxml="$2/gpu_tests.xml" 2>&1 | tee "$2/gpu_tests.log"; \
exit ${PIPESTATUS[0]}' "$PY" "$TIMEOUT_OPT" "$OUTDIR"

cat > "$TMP/nccl_world1.py" <<'PY'
import numpy as np
import ddp
import ddp.distributed as dist
dist.init_process_group("nccl")
assert dist.get_backend() == "nccl", dist.get_backend()
x = ddp.arange(8.0, device="cuda")
dist.all_reduce(x)
dist.broadcast(x, 0)
np.testing.assert_array_equal(x.cpu().numpy(), np.arange(8.0, dtype=np.float32))
model = ddp.nn.parallel.DistributedDataParallel(ddp.nn.Linear(8, 2).cuda())
model(x.reshape(1, 8)).sum().backward()
assert model.module.weight.grad.is_cuda
dist.barrier()
dist.destroy_process_group()
print("nccl world size 1: ok")
PY
stage "nccl backend, world size 1" 45 "$PY" "$TMP/nccl_world1.py"

cat > "$TMP/mpi_cupy_world2.py" <<'PY'
import numpy as np
import ddp
import ddp.distributed as dist
from ddp.distributed.optim import ZeroRedundancyOptimizer
dist.init_process_group("mpi")
rank, size = dist.get_rank(), dist.get_world_size()
ddp.manual_seed(0)
model = ddp.nn.parallel.DistributedDataParallel(ddp.nn.Linear(6, 3).cuda())
x = ddp.full((4, 6), float(rank), device="cuda")
model(x).sum().backward()
g = model.module.bias.grad
assert g.is_cuda
np.testing.assert_allclose(g.cpu().numpy(), np.full(3, 4.0, np.float32))
t = ddp.full((5,), float(rank), device="cuda")
dist.all_reduce(t, op=dist.ReduceOp.AVG)
np.testing.assert_allclose(t.cpu().numpy(), np.full(5, (size - 1) / 2, np.float32))
out = ddp.zeros(2 * size, device="cuda")
dist.all_gather_into_tensor(out, ddp.full((2,), float(rank), device="cuda"))
assert out.cpu().tolist() == [float(r) for r in range(size) for _ in range(2)]
# DDP + ZeRO (stage 1 and 2) on 2 ranks equal one process on the whole batch.
data = np.random.default_rng(1).standard_normal((6, 8, 9)).astype(np.float32)
for stage in (1, 2):
    ddp.manual_seed(0)
    ref = ddp.nn.Sequential(ddp.nn.Linear(9, 7), ddp.nn.GELU(), ddp.nn.Linear(7, 3)).cuda()
    ddp.manual_seed(0)
    net = ddp.nn.Sequential(ddp.nn.Linear(9, 7), ddp.nn.GELU(), ddp.nn.Linear(7, 3)).cuda()
    wrapped = ddp.nn.parallel.DistributedDataParallel(net)
    ref_opt = ddp.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = ZeroRedundancyOptimizer(net.parameters(), ddp.optim.AdamW, stage=stage, lr=1e-2)
    for batch in data:
        whole = ddp.tensor(batch, device="cuda")
        ref_opt.zero_grad()
        ref(whole).pow(2).mean().backward()
        ref_opt.step()
        opt.zero_grad()
        wrapped(whole[rank::size]).pow(2).mean().backward()
        opt.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert p.is_cuda
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
print(f"rank {rank}/{size}: mpi with cupy arrays, DDP and ZeRO stages 1-2 ok")
dist.destroy_process_group()
PY
if command -v mpiexec >/dev/null; then
  stage "mpi backend with CuPy arrays, DDP + ZeRO, world size 2" 60 \
    mpiexec -n 2 "$PY" "$TMP/mpi_cupy_world2.py"
  stage "MPI suites of DDP and ZeRO with the GPU as default device, -n 2" 60 bash -c \
'DDP_TEST_DEFAULT_DEVICE=cuda mpiexec -n 2 "$0" -m pytest -q --with-mpi -m mpi \
-p no:cacheprovider --tb=short tests/distributed/test_ddp_mpi.py tests/distributed/test_zero_mpi.py \
tests/distributed/test_collectives.py::test_cupy_arrays_are_staged_through_host_mpi 2>&1 \
| tee "$1/mpi_suites_gpu.log"; exit ${PIPESTATUS[0]}' "$PY" "$OUTDIR"
  stage "main job on the GPU: examples/train.py --device cuda, 2 ranks" 120 bash -c \
'mpiexec -n 2 "$0" examples/train.py --device cuda --no-progress --out "$1/train" 2>&1 \
| tee "$1/train_gpu.log" | tail -4; exit ${PIPESTATUS[0]}' "$PY" "$TMP"
else
  echo; echo "=== mpi stages ==="; echo "no mpiexec on PATH"
  NAMES+=("mpi stages"); RESULTS+=("FAIL (no mpiexec)")
fi

stage "bench_gpu.py (ddp vs torch CUDA eager)" 130 bash -c '"$0" benchmarks/bench_gpu.py \
--steps 20 --rounds 5 2>&1 | tee "$1/bench_gpu.log"; exit ${PIPESTATUS[0]}' "$PY" "$OUTDIR"
stage "profile of the GPT step" 45 "$PY" benchmarks/bench_gpu.py --models gpt --steps 5 \
  --profile "$OUTDIR/profile_gpt.txt"
stage "diagnostics: per-call overheads, GPT split, GEMMs" 60 bash -c '"$0" \
benchmarks/gpu_overheads.py 2>&1 | tee "$1/overheads.log"; \
echo "--- without the fused kernels (DDP_FUSED_KERNELS=0) ---"; \
DDP_FUSED_KERNELS=0 "$0" benchmarks/bench_gpu.py --models gpt,mlp --steps 8 --rounds 2 \
2>&1 | tee -a "$1/overheads.log"; exit ${PIPESTATUS[0]}' "$PY" "$OUTDIR"

echo; echo "=== summary ==="
failed=0
for i in "${!NAMES[@]}"; do
  printf '%-56s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
  case "${RESULTS[$i]}" in FAIL*) failed=1 ;; esac
done
if [ -n "${OUT:-}" ]; then  # keep compiled kernels for the next run (carry .gpucache)
  tar -czf "$OUT/cupy_cache.tgz" -C "$CUPY_CACHE_DIR" . 2>/dev/null
fi
rm -rf "$TMP"
exit $failed
