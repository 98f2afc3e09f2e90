"""Bad input to the ordering, einsum, scatter, product and distance ops: torch's errors.

Each case runs in ddp and in torch; both must raise the same exception type, with a message
that carries the phrase given (torch's wording, which ddp follows and extends with names and
shapes).
"""

from __future__ import annotations

import numpy as np
import pytest

import ddp


def _i64(T, values):
    return T.tensor(np.array(values, dtype=np.int64))


CASES = [
    ("topk_k_too_large", lambda T: T.ones(3).topk(4), RuntimeError,
     "selected index k out of range"),
    ("sort_bad_dim", lambda T: T.ones(3).sort(dim=2), IndexError, "Dimension out of range"),
    ("einsum_too_many_operands", lambda T: T.einsum("ij->i", T.ones(2, 2), T.ones(2)),
     RuntimeError, "more operands were provided than specified in the equation"),
    ("einsum_too_few_operands", lambda T: T.einsum("ij,jk->ik", T.ones(2, 2)),
     RuntimeError, "fewer operands were provided than specified in the equation"),
    ("einsum_rank_mismatch", lambda T: T.einsum("ijk->i", T.ones(2, 2)), RuntimeError,
     "number of subscripts in the equation"),
    ("einsum_size_mismatch", lambda T: T.einsum("ij,ij->i", T.ones(2, 3), T.ones(2, 4)),
     RuntimeError, "einsum()"),
    ("einsum_bad_output", lambda T: T.einsum("ij->k", T.ones(2, 2)), RuntimeError,
     "output subscript k does not appear in the equation for any input operand"),
    ("scatter_float_index", lambda T: T.zeros(3).scatter(0, T.tensor([0.0]), T.ones(1)),
     RuntimeError, "Expected dtype int32/int64 for index"),
    ("scatter_rank", lambda T: T.zeros(3, 2).scatter(0, _i64(T, [0]), T.ones(1)),
     RuntimeError, "Index tensor must have the same number of dimensions as self tensor"),
    ("scatter_dtype", lambda T: T.zeros(3).scatter(0, _i64(T, [0]), T.ones(1, dtype=T.float64)),
     RuntimeError, "Expected self.dtype to be equal to src.dtype"),
    ("scatter_out_of_range", lambda T: T.zeros(3).scatter(0, _i64(T, [3]), T.ones(1)),
     RuntimeError, "index 3 is out of bounds for dimension 0 with size 3"),
    ("scatter_index_too_big", lambda T: T.zeros(2, 2).scatter_add(0, _i64(T, [[0, 0, 0]]),
                                                                  T.ones(1, 3)),
     RuntimeError, r"Expected index \[1, 3\] to be no larger than self \[2, 2\] apart from "
                   r"dimension 0 and to be no larger size than src \[1, 3\]"),
    ("outer_2d", lambda T: T.outer(T.ones(2, 2), T.ones(2)), RuntimeError,
     "outer: Expected 1-D argument self, but got 2-D"),
    ("addmm_1d", lambda T: T.addmm(T.ones(2), T.ones(2), T.ones(2, 2)), RuntimeError,
     "mat1 must be a matrix, got 1-D tensor"),
    ("addmm_shapes", lambda T: T.addmm(T.ones(2, 2), T.ones(2, 3), T.ones(2, 2)), RuntimeError,
     r"mat1 and mat2 shapes cannot be multiplied \(2x3 and 2x2\)"),
    ("cdist_columns", lambda T: T.cdist(T.ones(2, 3), T.ones(2, 4)), RuntimeError,
     "X1 and X2 must have the same number of columns"),
    ("cdist_1d", lambda T: T.cdist(T.ones(3), T.ones(2, 3)), RuntimeError,
     "cdist only supports at least 2D tensors"),
    ("cdist_negative_p", lambda T: T.cdist(T.ones(2, 3), T.ones(2, 3), p=-1), RuntimeError,
     "cdist only supports non-negative p values"),
]


@pytest.mark.parametrize("build,error,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_as_torch(torch, build, error, phrase):
    for T in (ddp, torch):
        with pytest.raises(error, match=phrase):
            build(T)


def test_int32_index_scatters_and_baddbmm_names_its_2d_operand(torch):
    for T in (ddp, torch):  # torch accepts int32 indices too
        out = T.zeros(3).scatter(0, T.tensor([2], dtype=T.int32), T.ones(1))
        assert out.tolist() == [0.0, 0.0, 1.0]
    # torch fails inside with "Dimension out of range"; ddp names the operand
    with pytest.raises(RuntimeError, match="batch1 must be a 3D tensor, got 2-D tensor"):
        ddp.baddbmm(ddp.ones(2, 2), ddp.ones(2, 2), ddp.ones(2, 2))
