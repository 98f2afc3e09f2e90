#!/usr/bin/env bash
# One entry point for a fresh machine with only Python:
#   bash dev.sh train [ARGS...]   set up .venv, then train the main job on 4 MPI ranks
#   bash dev.sh test              set up .venv, then lint and run the whole test suite (1, 2, 3 ranks;
#                                 without a GPU also the GPU tests on a NumPy stand-in for CuPy)
#   bash dev.sh setup             set up .venv only
# Set-up is idempotent: it reinstalls only when pyproject.toml changed. Under CI (CI set) or with
# DDP_REQUIRE_TORCH=1 a missing torch oracle is an error; elsewhere its tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${DDP_VENV:-.venv}"
PY="$VENV/bin/python"
NRANKS="${DDP_NRANKS:-4}"
TORCH_VERSION="2.13.0"  # the oracle the tests' tolerances were set against (tests/_helpers.py)

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.ddp-installed"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e ".[test,examples]"
        install_oracle
        echo "$want" > "$stamp"
    elif torch_required; then
        install_oracle  # a set-up stamped without the oracle must not pass in CI
    fi
}

# CI (CI set, as CI services do) or DDP_REQUIRE_TORCH=1: the torch oracle must be there, or the
# comparison tests would all skip and the run pass without checking anything against torch.
torch_required() {
    [ "${DDP_REQUIRE_TORCH:-0}" = "1" ] && return 0
    case "${CI:-}" in "" | false | 0) return 1 ;; *) return 0 ;; esac
}

# torch is only a test/benchmark oracle, never a runtime dependency. Outside CI its tests skip,
# with the reason, when it cannot be installed; in CI that is an error.
install_oracle() {
    local pin="torch==$TORCH_VERSION" found
    found="$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)"
    [ "${found%%+*}" = "$TORCH_VERSION" ] && return 0
    if [ "${DDP_NO_TORCH:-0}" = "1" ]; then
        if torch_required; then
            echo "dev.sh: DDP_NO_TORCH=1, but CI/DDP_REQUIRE_TORCH=1 needs the oracle $pin" >&2
            return 1
        fi
        return 0
    fi
    if "$PY" -m pip install --quiet "$pin"; then
        return 0
    fi
    if torch_required; then
        echo "dev.sh: installing the torch oracle failed: $VENV/bin/python -m pip install $pin;" \
            "CI (or DDP_REQUIRE_TORCH=1) needs it" >&2
        return 1
    fi
    echo "dev.sh: torch oracle not installed ($pin failed); torch comparison tests will skip" >&2
}

# pytest exits 5 when it collected no test: for us that is a broken suite, not a pass.
run_pytest() {
    local rc=0
    "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "dev.sh: pytest collected no tests in: $*" >&2
        return 1
    fi
    return "$rc"
}

run_tests() {
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    echo "== ruff =="
    "$VENV/bin/ruff" check .
    run_pytest "$PY" -m pytest -q -m "not mpi" tests
    for n in 2 3; do
        echo "== MPI tests on $n ranks =="
        run_pytest timeout 900 "$VENV/bin/mpiexec" -n "$n" \
            "$PY" -m pytest -q --with-mpi -m mpi -p no:cacheprovider tests
    done
    if ! "$PY" -c "import sys, ddp; sys.exit(0 if ddp.cuda.is_available() else 1)"; then
        # No GPU here: run the GPU tests, and DDP/ZeRO with the GPU as default device, on
        # tests/_fake_cupy.py (NumPy behind CuPy's strictness). Real GPUs: benchmarks/gpu_check.sh
        echo "== device code paths on a NumPy stand-in for CuPy =="
        DDP_FAKE_CUPY=1 run_pytest "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/gpu
        DDP_FAKE_CUPY=1 DDP_TEST_DEFAULT_DEVICE=cuda run_pytest timeout 600 \
            "$VENV/bin/mpiexec" -n 2 "$PY" -m pytest -q --with-mpi -m mpi -p no:cacheprovider \
            tests/distributed/test_ddp_mpi.py tests/distributed/test_zero_mpi.py \
            tests/distributed/test_fsdp_mpi.py \
            tests/distributed/test_checkpoint_fsdp_mpi.py tests/distributed/test_memory_ledger_mpi.py \
            tests/gpu/test_nccl_backend.py
    fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
    setup) setup ;;
    test) setup; run_tests ;;
    train) setup; export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; exec "$VENV/bin/mpiexec" -n "$NRANKS" "$PY" examples/train.py "$@" ;;
    *) echo "usage: bash dev.sh {train [ARGS...]|test|setup}" >&2; exit 2 ;;
esac
