"""The examples run (briefly) on one rank in-process and on two MPI ranks, printing what they
should; the timeline and the diagnostics record and warn what they promise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ddp
import ddp.distributed as dist
import ddp.nn as nn
from ddp.debug import DDPDebugWarning
from ddp.nn.parallel import DistributedDataParallel
from ddp.profiler import timeline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MPIEXEC = Path(sys.executable).parent / "mpiexec"

SEED_LINES = [
    "   after backward:  x.grad = [100, 100]",
    "   SGD(lr=0.001).step(): x = [0.9, 1.9]   (x - 0.001 * x.grad)",
    "   z = 11; x.grad = 6x = 6, y.grad = 3y^2 = 12",
    "   SGD(lr=0.1).step(): x = 0.4, y = 0.8   (1 - 0.6, 2 - 1.2)",
    "   after backward #2: x.grad = 12, y.grad = 24",
    "   after zero_grad(): x.grad = None, y.grad = None",
    "   loss = a * b.clone().detach(): a.grad = [2], b.grad = None",
    "   after step: a = [0.8], b = [2] (b unchanged)",
    "   optimizer holds model.weight itself: True; dtype now ddp.float64",
    "   weight.grad = [1, 1]; weight moved by [-0.1, -0.1]",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mpirun(n: int, script: str, *args: str, env: dict | None = None) -> str:
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("DDP_DEBUG", None)
    result = subprocess.run(
        [str(MPIEXEC), "-n", str(n), sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, text=True, timeout=120, env=full_env, cwd=ROOT,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(autouse=True)
def _no_default_group_left():
    yield
    if dist.is_initialized():  # an example that raised before destroy_process_group()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ seed question
def test_seed_question_one_rank(capsys):
    _load("seed_question").main()
    out = capsys.readouterr().out.splitlines()
    for line in SEED_LINES:
        assert line in out
    assert ("   rank 0: x = 1, grad seen by the hook = [1], .grad after backward = [1], "
            "weight after step = [0.9]") in out
    assert any(line.startswith("   DDP_DEBUG=1 warns: SGD.step(): a parameter (shape (1,)) got "
                               "no gradient") for line in out)


def test_seed_question_two_ranks():
    out = _mpirun(2, "seed_question.py").splitlines()
    for line in SEED_LINES:
        assert line in out
    # Each rank's own gradient (x = rank + 1) in the hook; the average 1.5 in .grad after.
    assert ("   rank 0: x = 1, grad seen by the hook = [1], .grad after backward = [1.5], "
            "weight after step = [0.85]") in out
    assert ("   rank 1: x = 2, grad seen by the hook = [2], .grad after backward = [1.5], "
            "weight after step = [0.85]") in out


# ---------------------------------------------------------------------------------- main job
def test_train_one_rank_checkpoint_and_resume(tmp_path, capsys):
    train = _load("train")
    out_dir = str(tmp_path / "run")
    accuracy = train.main(["--epochs", "2", "--max-steps", "5", "--no-progress",
                           "--out", out_dir])
    out = capsys.readouterr().out
    assert "epoch   1  train loss" in out and "on 1 rank(s)" in out
    assert 0.2 < accuracy <= 1.0  # 5 steps of AdamW are far above chance (0.1)
    assert f"plot: {out_dir}/curves.png" in out
    assert os.path.getsize(os.path.join(out_dir, "curves.png")) > 1000
    state = ddp.load(os.path.join(out_dir, "checkpoint.ddp"))
    assert int(state["epoch"]) == 0  # --max-steps stopped inside epoch 1

    train.main(["--epochs", "2", "--max-steps", "3", "--no-progress", "--out", out_dir,
                "--resume"])
    out = capsys.readouterr().out
    assert f"resumed from {out_dir}/checkpoint.ddp at epoch 1" in out
    assert "epoch   2  train loss" in out and "epoch   1  train loss" not in out
    history = json.loads(ddp.load(os.path.join(out_dir, "checkpoint.ddp"))["history"])
    assert len(history["test_acc"]) == 2


def test_train_two_ranks_with_timeline(tmp_path):
    trace_dir = tmp_path / "trace"
    out = _mpirun(2, "train.py", "--epochs", "1", "--max-steps", "4", "--no-progress",
                  "--out", str(tmp_path / "run"), env={"DDP_TIMELINE": str(trace_dir)})
    assert "epoch   1  train loss" in out and "on 2 rank(s)" in out
    assert out.count("final test accuracy") == 1  # rank 0 prints, rank 1 does not
    assert out.count("memory per rank (ddp, N = 2, Ψ = 50,826)") == 1
    assert "every category within 5 % of its formula" in out
    assert (tmp_path / "run" / "curves.png").exists()
    for rank in (0, 1):
        events = json.loads((trace_dir / f"timeline-rank{rank}.json").read_text())["traceEvents"]
        spans = [e for e in events if e["ph"] == "X"]
        assert {e["pid"] for e in spans} == {rank}
        names = {e["name"] for e in spans}
        assert {"forward", "backward", "step", "ddp wait", "allreduce bucket 0"} <= names
        assert sum(e["name"] == "step" for e in spans) == 4


def test_train_two_ranks_powersgd_rank1_reaches_97_percent(tmp_path):
    # Measured: 97.77% after 12 epochs (97% first after epoch 8), ~20 s on 2 loaded cores;
    # the default 30 epochs reach 98.05% (docs/benchmarks.md).
    out = _mpirun(2, "train.py", "--epochs", "12", "--no-progress", "--comm-hook", "powersgd",
                  "--powersgd-rank", "1", "--out", str(tmp_path / "run"))
    assert "comm hook: powersgd rank 1 from step 10" in out
    accuracy = float(out.split("final test accuracy ")[1].split("%")[0])
    assert accuracy >= 97.0, out


def test_train_two_ranks_bf16_autocast_reaches_97_percent(tmp_path):
    """The main job under ``--amp bf16`` (autocast bfloat16, no scaler) at 2 ranks: 6 epochs
    reach 97.8% on this seed (the float32 job: 97-98%); 97% leaves two test samples of slack."""
    out = _mpirun(2, "train.py", "--amp", "bf16", "--epochs", "6", "--no-progress",
                  "--out", str(tmp_path / "run"))
    accuracy = float(out.split("final test accuracy ")[1].split("%")[0])
    assert accuracy >= 97.0, out


def test_train_one_rank_fp16_amp_with_grad_scaler(tmp_path, capsys):
    accuracy = _load("train").main(["--amp", "fp16", "--epochs", "1", "--max-steps", "8",
                                    "--no-progress", "--out", str(tmp_path / "run")])
    assert "epoch   1  train loss" in capsys.readouterr().out
    assert 0.2 < accuracy <= 1.0  # above chance (0.1) although the scaler skips overflowing steps


# ------------------------------------------------------------------------------ char model
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_charlm_one_rank_amp(amp, capsys):
    val_loss = _load("charlm").main(["--steps", "3", "--log-every", "1", "--sample-length",
                                     "4", "--d-model", "32", "--n-layer", "1", "--amp", amp])
    assert "step     3  loss" in capsys.readouterr().out
    assert 2.0 < val_loss < 5.0

def test_charlm_one_rank(capsys):
    val_loss = _load("charlm").main(["--steps", "3", "--log-every", "1", "--sample-length",
                                     "12", "--d-model", "32", "--n-layer", "1"])
    out = capsys.readouterr().out
    assert "step     3  loss" in out
    assert 2.0 < val_loss < 5.0  # ln(103) = 4.63 is the uniform guess
    sample = out.split("sample:\n")[1]
    assert sample.startswith("def ") and len(sample.rstrip("\n")) >= 16


def test_charlm_two_ranks_zero_stage2():
    out = _mpirun(2, "charlm.py", "--steps", "3", "--log-every", "1", "--sample-length", "12",
                  "--d-model", "32", "--n-layer", "1", "--zero-stage", "2")
    assert "zero stage 2" in out and "step     3  loss" in out
    assert "optimizer memory on rank 0" in out and "sample:\ndef " in out
    assert "memory report: zero-2, N = 2" in out


def test_charlm_two_ranks_fully_sharded():
    out = _mpirun(2, "charlm.py", "--steps", "3", "--log-every", "1", "--sample-length", "12",
                  "--d-model", "32", "--n-layer", "1", "--fsdp")
    assert "fully sharded" in out and "step     3  loss" in out
    assert out.count("memory report: fully-sharded, N = 2") == 1  # rank 0 prints the table
    assert "FLAG" not in out and "sample:\ndef " in out


def test_charlm_two_ranks_powersgd_and_fp16_hooks():
    for hook in (["powersgd", "--powersgd-rank", "2", "--powersgd-start", "2"], ["fp16"]):
        out = _mpirun(2, "charlm.py", "--steps", "4", "--log-every", "1", "--sample-length",
                      "12", "--d-model", "32", "--n-layer", "1", "--comm-hook", *hook)
        assert f"comm hook {hook[0]}" in out and "step     4  loss" in out


def test_charlm_comm_hook_with_zero_is_refused(capsys):
    with pytest.raises(SystemExit):
        _load("charlm").main(["--comm-hook", "fp16", "--zero-stage", "1"])
    assert "--comm-hook needs --zero-stage 0" in capsys.readouterr().err


# -------------------------------------------------------------------------------- timeline
@pytest.fixture
def trace_dir(tmp_path):
    timeline.clear()
    timeline.enable(tmp_path)
    yield tmp_path
    timeline.disable()
    timeline.clear()


def _deep_model_step():
    ddp.manual_seed(0)
    layers = [nn.Linear(256, 256) for _ in range(6)]
    model = DistributedDataParallel(nn.Sequential(*layers), bucket_cap_mb=0.3)
    optimizer = ddp.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(ddp.randn(64, 256)).pow(2).mean().backward()
        optimizer.step()


def test_timeline_two_ranks_buckets_overlap_backward(trace_dir):
    dist.spawn(_deep_model_step, 2)
    paths = timeline.flush()
    assert sorted(Path(p).name for p in paths) == ["timeline-rank0.json", "timeline-rank1.json"]
    for rank in (0, 1):
        trace = json.loads((trace_dir / f"timeline-rank{rank}.json").read_text())
        spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        assert all(e["pid"] == rank for e in spans)
        names = [e["name"] for e in spans]
        for name in ("forward", "backward", "step", "ddp wait"):
            assert names.count(name) == 3, name
        backward = [e for e in spans if e["name"] == "backward"]
        buckets = [e for e in spans if e["name"].startswith("allreduce bucket")]
        assert len(buckets) == 3 * len({e["name"] for e in buckets}) >= 6
        # The buckets run on DDP's communication thread, not on the rank's main thread.
        assert {e["tid"] for e in buckets}.isdisjoint({e["tid"] for e in backward})
        # The first bucket of an iteration starts while that iteration's backward still runs.
        overlapping = [b for b in buckets if any(
            w["ts"] <= b["ts"] < w["ts"] + w["dur"] for w in backward)]
        assert overlapping, "no all-reduce started during backward"
        thread_names = {e["args"]["name"] for e in trace["traceEvents"]
                        if e["ph"] == "M" and e["name"] == "thread_name"}
        assert f"ddp-comm-rank{rank}" in thread_names
    summary = timeline.summarize(trace_dir)
    assert [line.split(":")[0] for line in summary] == ["rank 0", "rank 1"]
    assert all("3 steps" in line and "during backward" in line for line in summary)
    merged = json.loads(Path(timeline.merge(trace_dir)).read_text())["traceEvents"]
    assert {e["pid"] for e in merged} == {0, 1}


def test_timeline_user_spans_and_disabled_cost(trace_dir):
    with timeline.span("load batch", "io", batch=3):
        timeline.instant("marker")
    events = timeline.trace_events()
    span = next(e for e in events if e["name"] == "load batch")
    assert span["cat"] == "io" and span["args"] == {"batch": 3} and span["dur"] >= 0
    assert any(e["name"] == "marker" and e["ph"] == "i" for e in events)
    timeline.disable()
    assert timeline.span("ignored") is timeline.span("also ignored")  # one shared no-op
    nn.Linear(2, 2)(ddp.ones(1, 2)).sum().backward()
    assert not any(e["name"] in ("ignored", "forward") for e in timeline.trace_events())


# ------------------------------------------------------------------------------ diagnostics
@pytest.fixture
def debug_on():
    ddp.debug.enable()
    yield
    ddp.debug.disable()


def _net():
    ddp.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _batch():
    return ddp.randn(5, 3), ddp.randn(5, 1)


def test_debug_silent_in_a_correct_loop(debug_on):
    model = _net()
    optimizer = ddp.optim.AdamW(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDPDebugWarning)
        for _ in range(3):
            x, y = _batch()
            optimizer.zero_grad()
            ddp.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        model.to(ddp.float64)  # in place: the optimizer still holds the model's parameters
        for set_to_none in (False, True):
            optimizer.zero_grad(set_to_none=set_to_none)
            x, y = _batch()
            ddp.nn.functional.mse_loss(model(x.double()), y.double()).backward()
            optimizer.step()
        with dist_world_of_one():  # DDP and ZeRO (whose inner AdamW steps a shard) stay quiet
            from ddp.distributed.optim import ZeroRedundancyOptimizer

            ddp_model = DistributedDataParallel(_net())
            zero = ZeroRedundancyOptimizer(ddp_model.parameters(), ddp.optim.AdamW, lr=0.01)
            for _ in range(2):
                zero.zero_grad()
                ddp_model(_batch()[0]).sum().backward()
                zero.step()


class dist_world_of_one:  # noqa: N801 - used like a function
    def __enter__(self):
        dist.init_process_group("local")

    def __exit__(self, *exc):
        dist.destroy_process_group()


class _DetachingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 1)

    def forward(self, x):
        return self.second(self.first(x).clone().detach())  # cuts `first` off the loss


def test_debug_warns_on_detached_parameter(debug_on):
    model = _DetachingNet()
    optimizer = ddp.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    ddp.nn.functional.mse_loss(model(x), y).backward()
    with pytest.warns(DDPDebugWarning, match=r"'_DetachingNet.first.weight' \(shape \(4, 3\)\), "
                      r"'_DetachingNet.first.bias' \(shape \(4,\)\) got no gradient .* skips "
                      r"them"):
        optimizer.step()
    optimizer.zero_grad()
    for p in model.first.parameters():  # a gradient left over from an earlier iteration
        p.grad = ddp.ones_like(p)
    ddp.nn.functional.mse_loss(model(x), y).backward()
    with pytest.warns(DDPDebugWarning, match=r"first.weight.* reuses their stale .grad"):
        optimizer.step()


def test_debug_warns_on_accumulation_without_zero_grad(debug_on):
    model = _net()
    optimizer = ddp.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDPDebugWarning)
        ddp.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()  # first step: nothing accumulated yet
    ddp.nn.functional.mse_loss(model(x), y).backward()  # adds to the grad the step used
    with pytest.warns(DDPDebugWarning, match=r"gradient of 'Sequential.0.weight' .* was not "
                      r"reset .*zero_grad\(\)") as record:
        optimizer.step()
    assert Path(record[0].filename).resolve() == Path(__file__).resolve()  # the user's line


def test_debug_warns_on_foreign_optimizer_tensors(debug_on):
    model = _net()
    optimizer = ddp.optim.SGD(_net().parameters(), lr=0.1)  # built from another instance
    x, y = _batch()
    ddp.nn.functional.mse_loss(model(x), y).backward()
    with pytest.warns(DDPDebugWarning, match=r"holds 4 tensor\(s\) that are not parameters of "
                      r"the model\(s\) that ran forward \(Sequential\)"):
        optimizer.step()


def test_debug_warns_on_parameter_replaced_after_optimizer(debug_on):
    model = _net()
    optimizer = ddp.optim.SGD(model.parameters(), lr=0.1)
    model[2].weight = nn.Parameter(model[2].weight.detach().to(ddp.float64).float())
    x, y = _batch()
    ddp.nn.functional.mse_loss(model(x), y).backward()
    with pytest.warns(DDPDebugWarning, match=r"holds 1 tensor\(s\) .* "
                      r"param_groups\[0\]\['params'\]\[2\] \(shape \(1, 4\)\)"):
        optimizer.step()


def test_debug_disabled_installs_nothing():
    ddp.debug.disable()
    model = _net()
    optimizer = ddp.optim.SGD(_net().parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DDPDebugWarning)
        for _ in range(2):
            model(_batch()[0]).sum().backward()
            optimizer.step()


def test_debug_pitfalls_example_warns_once_per_mistake(debug_on, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _load("debug_pitfalls").main()
    # "always" shows every repetition: bug 1 and 3 warn at each of 3 steps, bug 2 at 2 of them.
    messages = list(dict.fromkeys(str(w.message) for w in caught
                                  if w.category is DDPDebugWarning))
    assert len(messages) == 3, messages
    assert "'Net.encoder.weight' (shape (8, 4)), 'Net.encoder.bias'" in messages[0]
    assert "was not reset" in messages[1] and "not parameters of the model" in messages[2]
    assert "4. the correct loop" in capsys.readouterr().out
