"""Run an unchanged torch program under real torch or under ddp aliased as ``torch``.

    python tests/compat/_alias.py --framework ddp --weights w.npz --replay -- prog.py ARGS...

Test scaffolding, not part of the package. What it does to the process before the program
starts, and why each adapter is needed for a like-for-like comparison:

* ``--framework ddp``: a meta-path finder makes ``import torch`` / ``import torch.X`` return
  ``ddp`` / ``ddp.X``, so the program's own imports are untouched.
* ``torchvision``: the stand-in in ``shims/`` (random images of the real shapes).
* The same random numbers in both runs. ddp's generator is not torch's (Mersenne Twister +
  Philox), so a seeded program draws different numbers under each. In both runs the public
  draws a program makes (``randn``, ``rand``, ``randint``, ``randperm``, ``*_like``,
  ``multinomial``, ``F.dropout[12d]``, dropout in ``scaled_dot_product_attention``, the
  ``RandomSampler`` behind ``shuffle=True``) come from one NumPy stream seeded by ``--seed``;
  Python's ``random``, NumPy's global state and the framework's own generator are seeded too
  (torch seeds a fresh process at random).
* The same initial weights: a global forward pre-hook sees each model the first time it runs.
  Under torch (``--record``) it saves the model's ``state_dict``; under ddp (``--replay``) it
  loads the saved one, which is what a user does to start from torch's weights
  (``model.load_state_dict`` of a torch ``state_dict``, docs/compatibility.md).

Prints the program's stdout unchanged; ``--report FILE`` receives the program's wall time.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.abc
import importlib.util
import json
import math
import os
import random
import runpy
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class _TorchToDdp(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``torch[.X]`` is ``ddp[.X]``: the same module object under both names."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch" and not fullname.startswith("torch."):
            return None
        target_name = "ddp" + fullname[len("torch"):]
        if importlib.util.find_spec(target_name) is None:
            return None  # ImportError naming torch.X: a ddp namespace that does not exist
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module("ddp" + spec.name[len("torch"):])

    def exec_module(self, module):
        pass  # already executed under its ddp name


class SharedRandom:
    """The random draws scripts make, from one NumPy stream, as tensors of framework ``T``."""

    def __init__(self, T, seed: int) -> None:
        self.T = T
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _tensor(self, array, dtype=None, device=None, requires_grad=False):
        T = self.T
        out = T.from_numpy(np.ascontiguousarray(array))
        if dtype is not None or device is not None:
            out = out.to(device=device, dtype=dtype)
        return out.requires_grad_(True) if requires_grad else out

    @staticmethod
    def _shape(size):
        if len(size) == 1 and isinstance(size[0], (tuple, list)) or (
                len(size) == 1 and type(size[0]).__name__ == "Size"):
            return tuple(int(s) for s in size[0])
        return tuple(int(s) for s in size)

    def _float(self, dtype):
        return dtype if dtype is not None else self.T.get_default_dtype()

    def randn(self, *size, generator=None, dtype=None, device=None, requires_grad=False,
              **_ignored):
        array = self.rng.standard_normal(self._shape(size))
        return self._tensor(array, self._float(dtype), device, requires_grad)

    def rand(self, *size, generator=None, dtype=None, device=None, requires_grad=False,
             **_ignored):
        array = self.rng.random(self._shape(size))
        return self._tensor(array, self._float(dtype), device, requires_grad)

    def randint(self, *args, size=None, generator=None, dtype=None, device=None,
                requires_grad=False, **_ignored):
        if size is None:
            *bounds, size = args
        else:
            bounds = list(args)
        low, high = (0, bounds[0]) if len(bounds) == 1 else bounds
        array = self.rng.integers(int(low), int(high), size=self._shape((size,)))
        return self._tensor(array.astype(np.int64), dtype, device)

    def randperm(self, n, generator=None, dtype=None, device=None, **_ignored):
        return self._tensor(self.rng.permutation(int(n)).astype(np.int64), dtype, device)

    def randn_like(self, input, dtype=None, device=None, requires_grad=False,  # noqa: A002
                   **_ignored):
        return self.randn(*input.shape, dtype=dtype or input.dtype,
                          device=device or input.device, requires_grad=requires_grad)

    def rand_like(self, input, dtype=None, device=None, requires_grad=False,  # noqa: A002
                  **_ignored):
        return self.rand(*input.shape, dtype=dtype or input.dtype,
                         device=device or input.device, requires_grad=requires_grad)

    def multinomial(self, input, num_samples, replacement=False, generator=None,  # noqa: A002
                    **_ignored):
        probs = input.detach().cpu().double().numpy()
        rows = probs.reshape(-1, probs.shape[-1])
        out = np.empty((rows.shape[0], num_samples), dtype=np.int64)
        for r, p in enumerate(rows):
            p = p.copy()
            for k in range(num_samples):
                cdf = np.cumsum(p / p.sum())
                out[r, k] = min(int(np.searchsorted(cdf, self.rng.random(), side="right")),
                                len(p) - 1)
                if not replacement:
                    p[out[r, k]] = 0
        out = out.reshape(*probs.shape[:-1], num_samples)
        return self._tensor(out, device=input.device)

    def dropout(self, input, p=0.5, training=True, inplace=False):  # noqa: A002
        if not training or p == 0:
            return input
        keep = self.rng.random(tuple(input.shape)) >= p
        scale = self._tensor(keep / (1 - p), input.dtype, input.device)
        return input * scale

    def feature_dropout(self, input, p=0.5, training=True, inplace=False):  # noqa: A002
        """``dropout1d``/``dropout2d``: one draw per (sample, channel), torch's mask shape."""
        if not training or p == 0:
            return input
        shape = tuple(input.shape[:2]) + (1,) * (input.ndim - 2)
        keep = self.rng.random(shape) >= p
        scale = self._tensor(keep / (1 - p), input.dtype, input.device)
        return input * scale

    def attention(self, original):
        """``scaled_dot_product_attention`` whose dropout mask comes from the shared stream;
        without dropout the framework's own kernel runs."""
        T = self.T

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, **kwargs):
            if dropout_p == 0.0:
                return original(query, key, value, attn_mask, dropout_p, is_causal,
                                scale=scale, **kwargs)
            scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
            scores = query @ key.transpose(-2, -1) * scale
            if is_causal:
                causal = T.ones(query.size(-2), key.size(-2), dtype=T.bool).tril()
                scores = scores.masked_fill(causal.logical_not(), float("-inf"))
            if attn_mask is not None and attn_mask.dtype == T.bool:
                scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
            elif attn_mask is not None:
                scores = scores + attn_mask
            weights = self.dropout(T.softmax(scores, dim=-1), dropout_p, True)
            return weights @ value

        return sdpa

    def sampler_iter(self, sampler):
        n = len(sampler.data_source)
        if sampler.replacement:
            remaining = sampler.num_samples
            while remaining > 0:  # lazily, as torch's: num_samples may be 10**10
                chunk = min(remaining, 32)
                yield from (int(i) for i in self.rng.integers(0, n, size=chunk))
                remaining -= chunk
            return
        count = 0
        while count < sampler.num_samples:
            for i in self.rng.permutation(n)[:sampler.num_samples - count]:
                yield int(i)
                count += 1

    def install(self) -> None:
        T = self.T
        for name in ("randn", "rand", "randint", "randperm", "randn_like", "rand_like",
                     "multinomial"):
            setattr(T, name, getattr(self, name))
        T.nn.functional.dropout = self.dropout
        T.nn.functional.dropout1d = self.feature_dropout
        T.nn.functional.dropout2d = self.feature_dropout
        functional = T.nn.functional
        functional.scaled_dot_product_attention = self.attention(
            functional.scaled_dot_product_attention)
        if T.__name__ == "ddp":  # ddp's multi-head attention binds the function at import
            from ddp.nn._functions import mha_api

            mha_api.scaled_dot_product_attention = functional.scaled_dot_product_attention
        shared = self

        def __iter__(sampler):  # noqa: N807
            return shared.sampler_iter(sampler)

        T.utils.data.RandomSampler.__iter__ = __iter__


class FirstForwardWeights:
    """Saves (torch) or loads (ddp) each model's state at its first forward."""

    def __init__(self, T, path: Path, record: bool) -> None:
        self.T = T
        self.path = path
        self.record = record
        self.seen: list = []  # the modules themselves: ids of dead objects could be reused
        self.saved: dict[str, np.ndarray] = {}
        if not record:
            with np.load(path) as stored:
                self.saved = {k: stored[k] for k in stored.files}
        self.count = 0

    def hook(self, module, args):
        if any(module is m for m in self.seen):
            return
        self.seen.extend(module.modules())
        prefix = f"{self.count:03d}|"
        self.count += 1
        if self.record:
            for name, value in module.state_dict().items():
                self.saved[prefix + name] = value.detach().cpu().numpy().copy()
            return
        state = {k[len(prefix):]: self.T.from_numpy(v.copy()) for k, v in self.saved.items()
                 if k.startswith(prefix)}
        missing = set(module.state_dict()) - set(state)
        if missing:
            raise RuntimeError(f"compat harness: model #{self.count - 1} "
                               f"({type(module).__name__}) has state torch's has not: "
                               f"{sorted(missing)}")
        module.load_state_dict(state)

    def install(self) -> None:
        self.T.nn.modules.module.register_module_forward_pre_hook(self.hook)
        if self.record:
            atexit.register(lambda: np.savez(self.path, **self.saved))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "ddp"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, help="state_dicts file (.npz)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--record", action="store_true", help="torch: save first-forward weights")
    mode.add_argument("--replay", action="store_true", help="ddp: load them")
    parser.add_argument("--report", type=Path, help="JSON file for the program's wall time")
    parser.add_argument("program", type=Path)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)

    if opts.framework == "ddp":
        sys.meta_path.insert(0, _TorchToDdp())
    sys.path.insert(0, str(HERE / "shims"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch  # the real one, or ddp under the alias

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)  # unseeded programs: the same torch run every time
    SharedRandom(torch, opts.seed).install()
    if opts.weights is not None and (opts.record or opts.replay):
        FirstForwardWeights(torch, opts.weights, opts.record).install()

    program = opts.program.resolve()
    sys.argv = [str(program), *[a for a in opts.args if a != "--"]]
    sys.path.insert(0, str(program.parent))
    start = time.perf_counter()
    try:
        runpy.run_path(str(program), run_name="__main__")
    finally:
        sys.stdout.flush()
        if opts.report is not None:
            opts.report.write_text(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
