"""ddp: a data-parallel training runtime on NumPy/CuPy and MPI with PyTorch's API.

``import ddp as torch`` runs small torch programs: tensors with autograd, ``nn`` modules,
``optim`` optimizers, and ``ddp.distributed`` / ``DistributedDataParallel`` across MPI ranks.
"""
# ruff: noqa: F401 - this module re-exports the public API

from ddp import blas_env as _blas_env  # first: OpenBLAS reads its settings when NumPy loads it

# isort: split
from ddp import autograd
from ddp import dtypes as _dtypes
from ddp.autograd.anomaly_mode import (
    is_anomaly_check_nan_enabled,
    is_anomaly_enabled,
    set_anomaly_enabled,
)
from ddp.autograd.grad_mode import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from ddp.compiler import compile  # noqa: A004 - torch.compile
from ddp.creation import (
    arange,
    as_tensor,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    tensor,
    zeros,
    zeros_like,
)
from ddp.device import device, get_default_device, set_default_device
from ddp.dtypes import (
    bfloat16,
    double,
    dtype,
    finfo,
    float16,
    float32,
    float64,
    half,
    int8,
    int16,
    int32,
    int64,
    long,
    uint8,
)
from ddp.dtypes import (
    bool_ as bool,  # noqa: A004 - torch.bool
)
from ddp.dtypes import float_ as float  # noqa: A004 - torch.float
from ddp.dtypes import int_ as int  # noqa: A004 - torch.int
from ddp.legacy_types import (  # torch's pre-0.4 typed constructors
    BFloat16Tensor,
    BoolTensor,
    ByteTensor,
    CharTensor,
    DoubleTensor,
    FloatTensor,
    HalfTensor,
    IntTensor,
    LongTensor,
    ShortTensor,
)
from ddp.numerics import (
    are_deterministic_algorithms_enabled,
    get_float32_matmul_precision,
    is_deterministic_algorithms_warn_only_enabled,
    set_float32_matmul_precision,
    use_deterministic_algorithms,
)
from ddp.ops import (  # ordering, running sums, einsum, scatter, products, distances, sampling
    abs,
    addmm,
    all,
    allclose,
    amax,
    amin,
    any,
    argmax,
    argmin,
    argsort,
    baddbmm,
    bmm,
    cat,
    cdist,
    ceil,
    chunk,
    clamp,
    clone,
    concat,
    cos,
    cumprod,
    cumsum,
    div,
    einsum,
    eq,
    equal,
    exp,
    flatten,
    flip,
    floor,
    gather,
    ge,
    ger,
    gt,
    index_select,
    isfinite,
    isinf,
    isnan,
    le,
    log,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logsumexp,
    lt,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    mul,
    multinomial,
    ne,
    neg,
    outer,
    permute,
    pow,
    relu,
    reshape,
    round,
    rsqrt,
    scatter,
    scatter_add,
    sigmoid,
    sign,
    sin,
    softmax,
    sort,
    split,
    sqrt,
    squeeze,
    stack,
    std,
    sub,
    sum,
    t,
    tanh,
    topk,
    transpose,
    tril,
    triu,
    unbind,
    unsqueeze,
    var,
    where,
)
from ddp.ops import add as add
from ddp.random import Generator, get_rng_state, initial_seed, manual_seed, seed, set_rng_state
from ddp.tensor import Size, Tensor

clip = clamp


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


def numel(input: Tensor) -> int:  # noqa: A002 - torch.numel(input)
    return input.numel()


def get_default_dtype():
    return _dtypes.default_float


__version__ = "0.1.0"

from ddp import accelerator as accelerator  # noqa: E402 - torch.accelerator, over ddp.cuda
from ddp import amp as amp  # noqa: E402
from ddp import backends as backends  # noqa: E402 - torch.backends' switches
from ddp import config as _config  # noqa: E402 - sets torchrun's variables, last line
from ddp import cuda as cuda  # noqa: E402 - never imports CuPy by itself
from ddp import debug as debug  # noqa: E402 - DDP_DEBUG=1 switches diagnostics on at import
from ddp import distributed as distributed  # noqa: E402 - needs the names above
from ddp import futures as futures  # noqa: E402 - torch.futures
from ddp import multiprocessing as multiprocessing  # noqa: E402 - spawn runs ddp's threads ranks
from ddp import nn as nn  # noqa: E402 - nn builds on the names above
from ddp import onnx as onnx  # noqa: E402 - export raises: ddp records no traced graph
from ddp import optim as optim  # noqa: E402
from ddp import profiler as profiler  # noqa: E402 - DDP_TIMELINE=<dir> records a timeline
from ddp import utils as utils  # noqa: E402
from ddp.amp import autocast as autocast  # noqa: E402 - torch.autocast
from ddp.amp import clear_autocast_cache as clear_autocast_cache  # noqa: E402
from ddp.amp import get_autocast_dtype as get_autocast_dtype  # noqa: E402
from ddp.amp import is_autocast_enabled as is_autocast_enabled  # noqa: E402
from ddp.cuda import amp as _cuda_amp  # noqa: E402, F401 - sets torch.cuda.amp
from ddp.distributed.exit_protocol import install_launch_hooks as _launch_hooks  # noqa: E402
from ddp.serialization import load as load  # noqa: E402
from ddp.serialization import save as save  # noqa: E402
from ddp.utils import checkpoint as _checkpoint  # noqa: E402 - sets ddp.utils.checkpoint
from ddp.utils import data as _data  # noqa: E402, F401 - sets ddp.utils.data, as torch.utils.data

_launch_hooks()  # under mpiexec: a rank that fails or leaves before init still ends the job
_config.adopt_launcher_env()  # torchrun's RANK, LOCAL_RANK... readable before init_process_group
