"""Imports run one way: lower layers never import upper ones, not even inside a function.

``ddp/autograd``, ``ddp/ops`` and ``ddp/kernels`` sit below ``ddp/tensor.py``: they read the
``Tensor`` class from ``ddp.autograd.tensor_type``, which ``ddp.tensor`` binds when imported.
"""

import ast
from pathlib import Path

import ddp
from ddp.autograd import engine, tensor_type

ROOT = Path(ddp.__file__).parent
# Function-level imports load the process-group backend chosen at run time (MPI, NCCL).
FUNCTION_IMPORTS_ALLOWED = ("distributed/api.py",)
LOWER_LAYERS = ("autograd", "ops", "kernels", "backend.py", "dtypes.py", "device.py")
UPPER_MODULES = ("ddp.tensor", "ddp.tensor_ops", "ddp.creation", "ddp.nn", "ddp.optim",
                 "ddp.distributed", "ddp.utils.data", "ddp.serialization", "ddp.profiler",
                 "ddp.debug")


def _sources():
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _ddp_imports(node):
    """``(lineno, module)`` of every ``ddp`` import below ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
            # ``from ddp import nn`` names the module ddp.nn; ``from ddp.nn import x``, ddp.nn
            names = ([f"ddp.{a.name}" for a in sub.names] if sub.module == "ddp"
                     else [sub.module])
        elif isinstance(sub, ast.Import):
            names = [a.name for a in sub.names]
        else:
            continue
        for name in names:
            if name == "ddp" or name.startswith("ddp."):
                yield sub.lineno, name


def _is_upper(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in UPPER_MODULES)


def test_no_function_level_ddp_imports():
    offenders = []
    for rel, tree in _sources():
        if rel.startswith(FUNCTION_IMPORTS_ALLOWED):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                offenders += [f"{rel}:{line} imports {name} in {node.name}()"
                              for line, name in _ddp_imports(node)]
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_lower_layers_import_no_upper_layer():
    offenders = []
    for rel, tree in _sources():
        if not rel.startswith(LOWER_LAYERS):
            continue
        offenders += [f"{rel}:{line} imports {name}" for line, name in _ddp_imports(tree)
                      if _is_upper(name)]
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_tensor_class_is_bound_and_backward_lives_in_the_engine():
    assert tensor_type.Tensor is ddp.Tensor
    assert ddp.autograd.backward is engine.backward
    x = ddp.tensor([1.0, 2.0], requires_grad=True)
    ddp.autograd.backward([(x * x).sum()])
    assert x.grad.tolist() == [2.0, 4.0]
