"""Public PyTorch programs, vendored unchanged in ``programs/``, run under real torch and under
ddp aliased as ``torch`` (``_alias.py``); every number they print must agree.

Each program runs twice in a subprocess from the same random stream and, under ddp, from the
weights torch's run had at each model's first forward. The printed text must be the same once
numbers are taken out (addresses and timings excepted), and every number must agree:

* integers (counts, epochs, argmax labels) exactly;
* other numbers within ``rtol * |torch| + atol`` plus one unit in the last printed digit
  (either side of a rounding boundary). ``rtol`` is per program, from float32 rounding
  (``eps = 1.2e-7``) compounded over its steps: ``1e-4`` for up to a few thousand SGD steps of
  small models, looser where a program trains chaotically (stated at the entry).

``COMPAT_TIMES=path`` appends ``name torch_seconds ddp_seconds`` per program (docs/compatibility.md
has the table).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from _helpers import torch_oracle

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
REPO = HERE.parent.parent
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT")
LAUNCH_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "SLURM_", "MPI_", "DDP_")
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])"
                    r"|\bnan\b|\binf\b")
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")

torch_oracle()  # the reference must be installed (fails under CI otherwise)


@dataclass
class Program:
    name: str
    path: str  # relative to programs/
    args: list[str] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-6
    ignore: list[str] = field(default_factory=list)  # regexes: timings and the like
    sizes: str = "64,32"  # fake dataset sizes (train,test)
    setup: str | None = None  # name of a function below that writes data into the run dir
    pythonpath: str | None = None  # a directory below programs/ the program imports from
    missing: tuple[str, str] | None = None  # (the torch API ddp lacks, its error under ddp)
    timeout: int = 240


class MissingSurface(Exception):
    """The program stops under ddp at a torch API ddp does not have (docs/compatibility.md)."""


def _text_corpus(run_dir: Path) -> None:
    """A few hundred words in data/{train,valid,test}.txt for word_language_model."""
    rng = np.random.default_rng(7)
    words = [f"w{k}" for k in range(40)]
    (run_dir / "data").mkdir()
    for split, lines in (("train", 60), ("valid", 12), ("test", 12)):
        text = "\n".join(" ".join(rng.choice(words, size=rng.integers(4, 10)))
                         for _ in range(lines))
        (run_dir / "data" / f"{split}.txt").write_text(text + "\n")


def _char_dataset(run_dir: Path) -> None:
    """nanoGPT's prepared-data layout: data/tiny/{train,val}.bin (uint16) and meta.pkl."""
    rng = np.random.default_rng(11)
    data = run_dir / "data" / "tiny"
    data.mkdir(parents=True)
    # a repetitive text, so a few steps visibly lower the loss
    tokens = np.tile(rng.integers(0, 24, size=37), 40).astype(np.uint16)
    tokens[:1200].tofile(data / "train.bin")
    tokens[1200:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 24}, f)
    (run_dir / "configurator.py").write_text((PROGRAMS / "nanogpt" / "configurator.py").read_text())


SETUPS = {"text_corpus": _text_corpus, "char_dataset": _char_dataset}

TIMING = r"\d+(\.\d+)?\s*(ms|s)\b"
WHOLE_MODULE_SAVE = ("torch.save(module) / torch.load of a pickled nn.Module "
                     "(with torch.serialization.safe_globals)",
                     r"ddp.save cannot store an object of type model\.\w+Model")
PROGRAM_TABLE = [
    # learning PyTorch with examples: 2000 full-batch steps on 2000 points, losses are sums of
    # 2000 float32 squares (relative rounding ~1e-7 per step, no chaos): rtol 1e-4
    Program("polynomial_tensor", "tutorial_polynomial_tensor.py"),
    Program("polynomial_autograd", "tutorial_polynomial_autograd.py"),
    Program("polynomial_custom_function", "tutorial_polynomial_custom_function.py"),
    Program("polynomial_nn", "tutorial_polynomial_nn.py"),
    # RMSprop: the losses agree to 2e-6 until the fit reaches its noise floor (step ~1200);
    # there RMSprop's normalised steps (about lr = 1e-3 whatever the gradient) turn one flipped
    # rounding into runs that dither a step apart: weights at the optimum (~0) differ by up to
    # lr (atol 1e-3) and the plateau loss by up to 0.6% (rtol 1e-2)
    Program("polynomial_optim", "tutorial_polynomial_optim.py", rtol=1e-2, atol=1e-3),
    Program("polynomial_module", "tutorial_polynomial_module.py"),
    # 60-minute blitz: one forward/backward of LeNet (sums of <= 400 products): rtol 1e-4
    Program("blitz_neural_networks", "blitz_neural_networks.py", atol=1e-5),
    # blitz CIFAR-10 classifier: 2 epochs of 8 SGD steps (batch 4), then test accuracy
    Program("blitz_cifar10_classifier", "blitz_cifar10_classifier.py", sizes="32,20"),
    # pytorch/examples
    Program("examples_mnist", "examples_mnist.py",
            ["--epochs", "1", "--batch-size", "16", "--test-batch-size", "16",
             "--log-interval", "1"], sizes="48,32"),
    Program("examples_regression", "examples_regression.py"),
    Program("examples_vae", "examples_vae.py", ["--epochs", "1", "--batch-size", "16",
                                                "--log-interval", "1"], sizes="48,32"),
    Program("examples_dcgan", "examples_dcgan.py",
            ["--dataset", "fake", "--batchSize", "4", "--ngf", "8", "--ndf", "8", "--nz", "8",
             "--niter", "1", "--workers", "0", "--manualSeed", "1"], sizes="12,0",
            rtol=1e-3),
    Program("examples_mnist_rnn", "examples_mnist_rnn.py",
            ["--epochs", "1", "--batch-size", "16", "--test-batch-size", "16",
             "--log-interval", "1"], sizes="48,32"),
    # LSTM: --dropout 0, since torch drops out between LSTM layers inside its native kernel,
    # whose mask the harness cannot share. Transformer: --dropout 0.2 in the positional encoding
    # and nn.Transformer's own 0.1 in every layer, all drawn from the shared stream
    Program("word_language_model_lstm", "word_language_model/main.py",
            ["--data", "data", "--emsize", "16", "--nhid", "16", "--epochs", "1", "--bptt",
             "8", "--batch_size", "4", "--log-interval", "4", "--dropout", "0"],
            ignore=[r"time: *" + TIMING, r"ms/batch +[\d.]+"], setup="text_corpus",
            missing=WHOLE_MODULE_SAVE),
    Program("word_language_model_transformer", "word_language_model/main.py",
            ["--data", "data", "--model", "Transformer", "--emsize", "16", "--nhid", "16",
             "--nhead", "2", "--epochs", "1", "--bptt", "8", "--batch_size", "4",
             "--log-interval", "4", "--dropout", "0.2", "--lr", "1"],
            ignore=[r"time: *" + TIMING, r"ms/batch +[\d.]+"], setup="text_corpus",
            missing=WHOLE_MODULE_SAVE),
    # karpathy/nanoGPT: model.py + train.py, a 2-layer GPT for 6 AdamW steps of 2 micro-batches
    # (dropout in attention and residuals drawn from the shared stream)
    Program("nanogpt_train", "nanogpt/train.py",
            ["--device=cpu", "--compile=False", "--dataset=tiny", "--eval_iters=2",
             "--eval_interval=3", "--log_interval=1", "--block_size=16", "--batch_size=4",
             "--n_layer=2", "--n_head=2", "--n_embd=32", "--max_iters=6",
             "--lr_decay_iters=6", "--warmup_iters=2", "--dropout=0.1",
             "--gradient_accumulation_steps=2", "--dtype=float32", "--out_dir=out"],
            ignore=[r"time [\d.]+ms", r"mfu -?[\d.]+%"], setup="char_dataset"),
    # karpathy/minGPT: projects/adder trains a GPT to add 2-digit numbers
    Program("mingpt_adder", "mingpt_adder/projects/adder/adder.py",
            ["--trainer.max_iters=8", "--trainer.batch_size=8", "--trainer.num_workers=0",
             "--model.model_type=gpt-nano", "--system.work_dir=out"],
            ignore=[r"iter_dt [\d.]+ms"], pythonpath="mingpt_adder"),
]


def _run(program: Program, framework: str, run_dir: Path, weights: Path,
         may_fail: bool = False) -> tuple[str, float | None, str]:
    """(stdout, the program's seconds, stderr) of one run in a fresh process."""
    report = run_dir / f"{framework}.json"
    report.unlink(missing_ok=True)
    mode = "--record" if framework == "torch" else "--replay"
    paths = [str(REPO), str(HERE.parent)]
    if program.pythonpath:
        paths.append(str(PROGRAMS / program.pythonpath))
    # a program started alone: no launcher's or torchrun's variables (nanoGPT's train.py runs
    # init_process_group when RANK is set), whatever this process's environment holds
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCH_VARS and not k.startswith(LAUNCH_PREFIXES)}
    env.update(PYTHONPATH=os.pathsep.join(paths), COMPAT_DATASET_SIZES=program.sizes,
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [sys.executable, str(HERE / "_alias.py"), "--framework", framework, "--weights",
           str(weights), mode, "--report", str(report), str(PROGRAMS / program.path), "--",
           *program.args]
    done = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True,
                          timeout=program.timeout)
    if done.returncode != 0 and may_fail:
        return done.stdout, None, done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{program.name} under {framework} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done.stdout, json.loads(report.read_text())["seconds"], done.stderr


def _normalize(text: str, program: Program) -> str:
    text = ADDRESS.sub("0x?", text)
    for pattern in program.ignore:
        text = re.sub(pattern, "<ignored>", text)
    return text


def _decimals(token: str) -> int:
    mantissa = token.lower().split("e")[0]
    exponent = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return digits - exponent


def compare_outputs(ours: str, theirs: str, program: Program) -> int:
    """Asserts the same text and agreeing numbers; returns how many numbers were compared."""
    ours, theirs = _normalize(ours, program), _normalize(theirs, program)
    skeleton_ours, skeleton_theirs = NUMBER.sub("#", ours), NUMBER.sub("#", theirs)
    if skeleton_ours != skeleton_theirs:
        for k, (a, b) in enumerate(zip(skeleton_ours.splitlines(),
                                       skeleton_theirs.splitlines(), strict=False)):
            assert a == b, f"{program.name}: line {k} differs:\n ddp:   {a}\n torch: {b}"
        raise AssertionError(f"{program.name}: ddp printed {len(skeleton_ours.splitlines())} "
                             f"lines, torch {len(skeleton_theirs.splitlines())}")
    tokens_ours, tokens_theirs = NUMBER.findall(ours), NUMBER.findall(theirs)
    for k, (a, b) in enumerate(zip(tokens_ours, tokens_theirs, strict=True)):
        where = f"{program.name}: number {k} ({a!r} under ddp, {b!r} under torch)"
        if re.fullmatch(r"[-+]?\d+", a) and re.fullmatch(r"[-+]?\d+", b):
            assert int(a) == int(b), where
            continue
        x, y = float(a), float(b)
        if math.isnan(y) or math.isinf(y):
            assert str(x) == str(y), where
            continue
        last_digit = 10.0 ** -max(_decimals(a), _decimals(b))
        bound = program.rtol * abs(y) + program.atol + last_digit
        assert abs(x - y) <= bound, f"{where}: |diff| {abs(x - y):.3g} > {bound:.3g}"
    return len(tokens_theirs)


def _param(program: Program):
    marks = ()
    if program.missing:
        marks = pytest.mark.xfail(strict=True, raises=MissingSurface,
                                  reason=f"ddp lacks {program.missing[0]}")
    return pytest.param(program, id=program.name, marks=marks)


@pytest.mark.parametrize("program", [_param(p) for p in PROGRAM_TABLE])
def test_program_prints_torchs_numbers(program, tmp_path):
    if program.setup:
        SETUPS[program.setup](tmp_path)
    weights = tmp_path / "first_forward_weights.npz"
    theirs, t_torch, _ = _run(program, "torch", tmp_path, weights)
    ours, t_ddp, errors = _run(program, "ddp", tmp_path, weights,
                               may_fail=program.missing is not None)
    if program.missing and t_ddp is None:
        api, error = program.missing
        assert re.search(error, errors), f"{program.name} failed otherwise:\n{errors[-4000:]}"
        # what it printed before stopping must still be torch's
        lines = ours.count("\n")
        compare_outputs(ours, "".join(theirs.splitlines(keepends=True)[:lines]), program)
        raise MissingSurface(f"{program.name} stops at {api} after {lines} matching lines")
    compared = compare_outputs(ours, theirs, program)
    assert compared > 0, f"{program.name} printed no numbers"
    times = os.environ.get("COMPAT_TIMES")
    if times:
        with open(times, "a") as f:
            f.write(f"{program.name} {t_torch:.2f} {t_ddp:.2f} {compared}\n")


def test_comparison_catches_a_different_number_and_different_text():
    program = Program("self-check", "none.py")
    assert compare_outputs("loss 1.00000 after 3 steps", "loss 1.00001 after 3 steps",
                           program) == 2
    with pytest.raises(AssertionError, match="number 0"):
        compare_outputs("loss 1.0100 after 3", "loss 1.0000 after 3", program)
    with pytest.raises(AssertionError, match="number 1"):
        compare_outputs("loss 1.0 after 4", "loss 1.0 after 3", program)
    with pytest.raises(AssertionError, match="line 0 differs"):
        compare_outputs("loss: 1.0", "loss 1.0", program)
