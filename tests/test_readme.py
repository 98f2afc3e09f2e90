"""The README's example runs as written, alone and on two MPI ranks (same averaged gradient)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _readme_example(tmp_path: Path) -> Path:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    return script


def _run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_readme_example_runs_alone(tmp_path):
    out = _run([sys.executable, str(_readme_example(tmp_path))])
    assert out.startswith("rank 0: tensor([[")


def test_readme_example_averages_gradients_across_two_ranks(tmp_path):
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    out = _run([str(MPIEXEC), "-n", "2", sys.executable, str(_readme_example(tmp_path))])
    # print() writes the text and its newline separately, so lines of two ranks can interleave.
    grads = dict(re.findall(r"rank (\d): (tensor\(\[\[.*?\]\]\))", out, flags=re.S))
    assert set(grads) == {"0", "1"}, out
    assert grads["0"] == grads["1"]
