#!/usr/bin/env bash
# One GPU check, under 5 minutes: GPU tests, NCCL at world size 1, the MPI backend with CuPy
# arrays at world size 2 (both ranks on the one GPU: NCCL refuses that), and bench_gpu.py.
# Every stage runs even if an earlier one failed; a summary follows; exit 1 if any failed.
# Run from the repo root with the system python3 (no venv, no network, no pip):
#     bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
declare -a NAMES=() RESULTS=()

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo; echo "=== $name ==="
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  local verdict="PASS"
  [ "$rc" -ne 0 ] && verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))"
  NAMES+=("$name"); RESULTS+=("$verdict ($((SECONDS - start)) s)")
}

stage "environment" 60 "$PY" - <<'PY'
import sys
import numpy, cupy
print("python", sys.version.split()[0], "numpy", numpy.__version__, "cupy", cupy.__version__)
print("GPUs:", cupy.cuda.runtime.getDeviceCount(), "nccl:", cupy.cuda.nccl.available)
import ddp
assert ddp.cuda.is_available(), ddp.backend.cupy_unavailable_reason()
print("device:", ddp.cuda.get_device_name())
PY

# All-skipped would "pass": require a GPU first.
stage "gpu tests (pytest -m gpu tests/gpu)" 150 bash -c '"$0" -c "import ddp, sys; \
sys.exit(0 if ddp.cuda.is_available() else 1)" && "$0" -m pytest -q -m gpu tests/gpu \
-p no:cacheprovider --maxfail=20 -rs' "$PY"

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
stage "nccl backend, world size 1" 60 "$PY" "$TMP/nccl_world1.py"

cat > "$TMP/mpi_cupy_world2.py" <<'PY'
import numpy as np
import ddp
import ddp.distributed as dist
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
print(f"rank {rank}/{size}: mpi with cupy arrays ok")
dist.destroy_process_group()
PY
MPIEXEC="$(command -v mpiexec || command -v mpirun || true)"
if [ -n "$MPIEXEC" ]; then
  stage "mpi backend with CuPy arrays, world size 2" 90 \
    "$MPIEXEC" -n 2 "$PY" "$TMP/mpi_cupy_world2.py"
else
  echo; echo "=== mpi backend with CuPy arrays, world size 2 ==="; echo "no mpiexec on PATH"
  NAMES+=("mpi backend with CuPy arrays, world size 2"); RESULTS+=("FAIL (no mpiexec)")
fi

stage "bench_gpu.py (ddp vs torch CUDA eager)" 150 \
  "$PY" benchmarks/bench_gpu.py --steps 8 --rounds 2

echo; echo "=== summary ==="
failed=0
for i in "${!NAMES[@]}"; do
  printf '%-48s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
  case "${RESULTS[$i]}" in FAIL*) failed=1 ;; esac
done
rm -rf "$TMP"
exit $failed
