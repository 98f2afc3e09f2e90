"""``ddp.config``: one table of environment switches, the only reads of ``os.environ``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ddp import config

ROOT = Path(__file__).resolve().parent.parent


def test_no_environment_access_outside_config():
    offenders = []
    for path in sorted((ROOT / "ddp").rglob("*.py")):
        if path.name == "config.py" and path.parent.name == "ddp":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bos\.(environ|getenv|putenv|unsetenv)\b|\bgetenv\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "read the environment through ddp.config:\n" + "\n".join(offenders)


def test_docs_table_lists_every_switch_and_only_those():
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, flags=re.M))
    assert documented == set(config.SWITCHES)
    for name, switch in config.SWITCHES.items():
        row = re.search(rf"^\| `{name}` \|.*\| {switch.read} \|", text, flags=re.M)
        assert row, f"docs/configuration.md: the row of {name} must say it is read at {switch.read}"


def test_unset_and_empty_mean_the_default(monkeypatch):
    monkeypatch.delenv("DDP_COMM_MODE", raising=False)
    assert config.get("DDP_COMM_MODE") == "thread"
    monkeypatch.setenv("DDP_COMM_MODE", "")
    assert config.get("DDP_COMM_MODE") == "thread"
    assert config.is_set("DDP_COMM_MODE")
    monkeypatch.setenv("DDP_COMM_MODE", "sync")
    assert config.get("DDP_COMM_MODE") == "sync"


@pytest.mark.parametrize("text, value", [("1", True), ("true", True), ("ON", True),
                                         ("0", False), ("no", False), ("off", False)])
def test_flags(monkeypatch, text, value):
    monkeypatch.setenv("DDP_FUSED_KERNELS", text)
    assert config.get("DDP_FUSED_KERNELS") is value


@pytest.mark.parametrize("name, text, message", [
    ("DDP_FUSED_KERNELS", "maybe", r"DDP_FUSED_KERNELS must be one of .*'maybe'"),
    ("DDP_COMM_MODE", "async", r"DDP_COMM_MODE must be one of \('thread', 'nonblocking', 'sync'\)"),
    ("DDP_TIMEOUT", "soon", "DDP_TIMEOUT must be a number of seconds, got 'soon'"),
    ("DDP_TIMEOUT", "-3", "DDP_TIMEOUT must be a positive number of seconds"),
    ("OMP_NUM_THREADS", "many", "OMP_NUM_THREADS must be a positive integer"),
    ("OMP_NUM_THREADS", "0", "OMP_NUM_THREADS must be a positive integer"),
])
def test_invalid_text_names_the_variable(monkeypatch, name, text, message):
    monkeypatch.setenv(name, text)
    with pytest.raises(ValueError, match=message):
        config.get(name)


def test_thread_count_takes_the_outer_level_of_an_openmp_list(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert config.get("OMP_NUM_THREADS") == 4


def test_launcher_variables_are_lenient(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("SLURM_PROCID", "not-a-number")
    assert config.get("PMI_SIZE") == 4
    assert config.get("SLURM_PROCID") is None


def test_undeclared_name_is_refused():
    with pytest.raises(KeyError, match="DDP_NOPE"):
        config.get("DDP_NOPE")


def test_export_launch_env_and_child_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    config.export_launch_env(3, 4, 1, 2)
    assert [os.environ[n] for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")] \
        == ["3", "4", "1", "2"]
    assert config.child_env(4)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in config.child_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert config.child_env(4)["OMP_NUM_THREADS"] == "3"


def test_import_time_switch_with_bad_text_fails_import_loudly():
    env = {**os.environ, "DDP_DEBUG": "sometimes", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "import ddp"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "DDP_DEBUG must be one of" in proc.stderr
