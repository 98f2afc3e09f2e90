"""examples/resnet.py runs (small) on one rank in-process and on two MPI ranks, and the two
ranks with SyncBatchNorm + DDP train exactly like one process on the same global batch."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ddp.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "resnet.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
SMALL = ["--steps", "3", "--width", "4", "--image-size", "8"]


def _load():
    spec = importlib.util.spec_from_file_location("example_resnet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_default_group_left():
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_resnet_one_rank_trains(capsys):
    losses = _load().main(SMALL + ["--batch-size", "8"])
    out = capsys.readouterr().out
    assert "20 SyncBatchNorm layers, 1 rank(s) x 8 images of 8x8" in out
    assert "running statistics identical on all ranks: True" in out
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)  # random labels: ~log(10)


def test_resnet_two_ranks_equal_one_process_on_the_global_batch(capsys):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    single = _load().main(SMALL + ["--batch-size", "8"])
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DDP_DEBUG", None)
    result = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(EXAMPLE), *SMALL,
                             "--batch-size", "4"], capture_output=True, text=True, timeout=120,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rank(s) x 4 images" in result.stdout
    assert "running statistics identical on all ranks: True" in result.stdout
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    # float32 model, printed to 4 decimals: the batch statistics of 2 x 4 images are those of
    # the 8 images up to summation order, so the losses agree to the printed precision.
    assert losses == pytest.approx(single, abs=2e-4)
