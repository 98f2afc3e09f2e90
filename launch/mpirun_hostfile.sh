#!/usr/bin/env bash
# Run a ddp training script across the machines listed in a hostfile.
#   bash launch/mpirun_hostfile.sh HOSTFILE NRANKS examples/train.py [ARGS...]
# Requirements: the same path to this repository and its .venv on every host (shared
# filesystem or identical checkouts), and password-less ssh from this host to the others.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: $0 HOSTFILE NRANKS SCRIPT [ARGS...]" >&2
    exit 2
fi
HOSTFILE="$1"; NRANKS="$2"; shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DDP_VENV:-$ROOT/.venv}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# ddprun finds the mpiexec of the venv and passes the hostfile with the right flag for it.
exec "$VENV/bin/python" -m ddp.launcher -n "$NRANKS" --hostfile "$HOSTFILE" "$@"
