"""``ddp.nn`` modules: registration, state, device/dtype, hooks, and layers against torch."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
from _helpers import EPS32, GELU_DDP_FORWARD, GELU_TORCH_FORWARD, assert_within, torch_oracle

import ddp
from ddp import nn

torch = torch_oracle()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
        self.register_buffer("steps", ddp.zeros(1))
        self.register_buffer("scratch", ddp.zeros(2), persistent=False)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        x = self.act(self.fc1(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def copy_from_torch(d_module, t_module):
    """Copy torch's parameters into the ddp module by name (same registration names)."""
    state = {k: ddp.tensor(v.detach().numpy()) for k, v in t_module.state_dict().items()}
    d_module.load_state_dict(state)


def test_registration_order_names_and_dedup():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "blocks.0.weight", "blocks.0.bias",
                     "blocks.1.weight", "blocks.1.bias", "head.weight", "head.bias"]
    net.blocks[1].weight = net.blocks[0].weight  # shared parameter appears once
    assert len(list(net.parameters())) == 7
    assert [n for n, _ in net.named_buffers()] == ["steps", "scratch"]
    # own parameters, own persistent buffers, then children (torch's order)
    assert list(net.state_dict()) == [
        "steps", "fc1.weight", "fc1.bias", "blocks.0.weight", "blocks.0.bias",
        "blocks.1.weight", "blocks.1.bias", "head.weight", "head.bias"]
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "blocks", "head"]
    assert [n for n, _ in net.named_modules()] == ["", "fc1", "act", "blocks", "blocks.0",
                                                   "blocks.1", "head"]
    assert net.get_submodule("blocks.1") is net.blocks[1]


def test_setattr_rules():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign .* as parameter 'weight'"):
        m.weight = ddp.randn(2, 2)
    m.weight = None
    assert m.weight is None and "weight" in m._parameters
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'nope'"):
        m.nope  # noqa: B018
    plain = nn.Module()
    plain.p = nn.Parameter(ddp.ones(3))
    assert list(plain.state_dict()) == ["p"]
    del plain.p
    assert list(plain.parameters()) == []

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(ddp.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_parameter_is_a_tensor_sharing_storage():
    data = ddp.ones(2)
    p = nn.Parameter(data)
    assert isinstance(p, ddp.Tensor) and p.requires_grad and p.is_leaf
    data.array[0] = 5.0
    assert p.array[0] == 5.0
    assert repr(p).startswith("Parameter containing:\ntensor([5., 1.], requires_grad=True)")
    assert type(p * 2) is ddp.Tensor
    assert not nn.Parameter(ddp.ones(1), requires_grad=False).requires_grad


def test_state_dict_round_trip_in_place():
    a, b = Net(), Net()
    weight_obj = b.fc1.weight
    array_obj = b.fc1.weight.array
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b.fc1.weight is weight_obj and b.fc1.weight.array is array_obj
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(pa.numpy() if not pa.requires_grad else pa.detach().numpy(),
                                      pb.detach().numpy())
    sd = a.state_dict()
    assert not sd["fc1.weight"].requires_grad
    assert np.shares_memory(sd["fc1.weight"].array, a.fc1.weight.array)


def test_load_state_dict_errors_name_keys_and_shapes():
    net = Net()
    sd = net.state_dict()
    del sd["head.bias"]
    sd["extra.weight"] = ddp.zeros(1)
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(sd)
    text = str(info.value)
    assert 'Missing key(s) in state_dict: "head.bias"' in text
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in text
    result = net.load_state_dict(sd, strict=False)
    assert result == (["head.bias"], ["extra.weight"])
    bad = net.state_dict()
    bad["fc1.weight"] = ddp.zeros(4, 4)
    with pytest.raises(RuntimeError, match=r"size mismatch for fc1.weight: copying a param with "
                       r"shape torch.Size\(\[4, 4\]\) .* current model is torch.Size\(\[3, 4\]\)"):
        net.load_state_dict(bad, strict=False)


def test_to_dtype_keeps_parameter_objects_and_grads():
    net = Net()
    params = list(net.parameters())
    net(ddp.randn(2, 4)).sum().backward()
    returned = net.to(ddp.float64)
    assert returned is net
    assert list(net.parameters()) == params
    assert all(a is b for a, b in zip(net.parameters(), params, strict=True))
    assert all(p.dtype == ddp.float64 and p.grad.dtype == ddp.float64 for p in params)
    assert net.steps.dtype == ddp.float64
    out = net(ddp.randn(2, 4, dtype=ddp.float64))
    assert out.dtype == ddp.float64
    net.float()
    assert all(p.dtype == ddp.float32 for p in params)
    assert net.to("cpu") is net and net.cpu() is net
    with pytest.raises(TypeError, match="floating point"):
        net.to(ddp.int64)


def test_train_eval_zero_grad_apply_requires_grad():
    net = Net()
    assert net.training and net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net(ddp.randn(3, 4)).sum().backward()
    net.zero_grad(set_to_none=False)
    assert all(float(p.grad.abs().sum()) == 0 for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen[0] == "Linear"
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_forward_hooks_can_modify_and_be_removed():
    lin = nn.Linear(2, 2)
    calls = []
    h1 = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    h2 = lin.register_forward_hook(lambda m, args, out: calls.append(out.shape) or out + 1)
    out = lin(ddp.randn(3, 2))
    np.testing.assert_allclose(out.detach().numpy(), np.tile(lin.bias.detach().numpy() + 1, (3, 1)),
                               rtol=1e-6)
    assert calls == [ddp.Size([3, 2])]
    h1.remove()
    h2.remove()
    x = ddp.randn(3, 2)
    w, b = lin.weight.detach().numpy().astype(np.float64), lin.bias.detach().numpy()
    x64 = x.numpy().astype(np.float64)
    # two products and two additions in float32: within 2 EPS32 of the sizes they add up
    assert_within(lin(x).detach().numpy(), x64 @ w.T + b,
                  2 * EPS32 * (np.abs(x64) @ np.abs(w).T + np.abs(b)), "linear after hooks")


def test_repr_matches_torch_layout():
    d = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8, 2, bias=False), nn.LayerNorm(2), nn.Dropout(0.1),
                      nn.Embedding(5, 2, padding_idx=0), nn.GELU())
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(8, 2, bias=False), torch.nn.LayerNorm(2),
                            torch.nn.Dropout(0.1), torch.nn.Embedding(5, 2, padding_idx=0),
                            torch.nn.GELU())
    assert repr(d) == repr(t)


def test_containers():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    seq.append(nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and isinstance(seq[1], nn.ReLU)
    assert len(seq[:2]) == 2
    assert seq(ddp.randn(4, 2)).shape == ddp.Size([4, 1])
    named = nn.Sequential(OrderedDict([("a", nn.Linear(2, 2)), ("b", nn.Tanh())]))
    assert list(named.state_dict()) == ["a.weight", "a.bias"]
    md = nn.ModuleDict({"x": nn.Linear(1, 1)})
    md["y"] = nn.Linear(1, 2)
    assert list(md.keys()) == ["x", "y"] and "y" in md
    assert [n for n, _ in md.named_parameters()] == ["x.weight", "x.bias", "y.weight", "y.bias"]
    ml = nn.ModuleList()
    ml.append(nn.Linear(1, 1))
    ml += [nn.Linear(1, 1)]
    assert len(ml) == 2 and len(list(ml.parameters())) == 4
    with pytest.raises(IndexError):
        ml[2]  # noqa: B018


def test_default_initialisation_statistics():
    ddp.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)  # kaiming_uniform_(a=sqrt(5)) gives U(+-1/sqrt(fan_in))
    w = lin.weight.detach().numpy()
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert np.abs(lin.bias.detach().numpy()).max() <= bound
    conv = nn.Conv2d(4, 6, 3)
    assert np.abs(conv.weight.detach().numpy()).max() <= 1 / math.sqrt(36)
    emb = nn.Embedding(1000, 50, padding_idx=3)
    e = emb.weight.detach().numpy()
    assert abs(e.std() - 1.0) < 0.02 and not e[3].any()
    ln = nn.LayerNorm(5)
    assert ln.weight.detach().numpy().tolist() == [1.0] * 5 and not ln.bias.detach().numpy().any()


def test_init_functions():
    from ddp.nn import init

    w = ddp.empty(200, 100)
    assert init._calculate_fan_in_and_fan_out(ddp.empty(8, 4, 3, 3)) == (36, 72)
    assert init.calculate_gain("relu") == math.sqrt(2.0)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == math.sqrt(2.0 / 6)
    init.xavier_uniform_(w)
    assert np.abs(w.numpy()).max() <= math.sqrt(6 / 300)
    init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.numpy().std() - math.sqrt(2 / 100)) < 0.005
    init.xavier_normal_(w, gain=2.0)
    assert abs(w.numpy().std() - 2 * math.sqrt(2 / 300)) < 0.01
    init.trunc_normal_(w, std=0.5, a=-0.4, b=0.6)
    assert w.numpy().min() >= -0.4 and w.numpy().max() <= 0.6
    assert abs(w.numpy().mean() - 0.0710) < 0.01  # mean of N(0, .25) truncated to [-.4, .6]
    init.constant_(w, 0.25)
    assert (w.numpy() == 0.25).all()
    p = nn.Parameter(ddp.empty(3))
    init.normal_(p, 1.0, 0.0)  # works on leaves that require grad
    assert p.detach().numpy().tolist() == [1.0, 1.0, 1.0]


def test_clip_grad_norm_and_value_vs_torch():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
    for norm_type in (2.0, 1.0, math.inf, 3.0):
        dp = [nn.Parameter(ddp.zeros(*g.shape)) for g in grads]
        tp = [torch.nn.Parameter(torch.zeros(*g.shape)) for g in grads]
        for d, t, g in zip(dp, tp, grads, strict=True):
            d.grad = ddp.tensor(g.copy())
            t.grad = torch.tensor(g.copy())
        dn = nn.utils.clip_grad_norm_(dp, 0.5, norm_type=norm_type)
        tn = torch.nn.utils.clip_grad_norm_(tp, 0.5, norm_type=norm_type)
        assert isinstance(dn, ddp.Tensor)
        np.testing.assert_allclose(float(dn), float(tn), rtol=1e-5)
        for d, t in zip(dp, tp, strict=True):
            np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
    p = nn.Parameter(ddp.zeros(3))
    p.grad = ddp.tensor([float("nan"), 1.0, 2.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    p.grad = ddp.tensor([-3.0, 0.5, 2.0])
    nn.utils.clip_grad_value_([p], 1.0)
    assert p.grad.numpy().tolist() == [-1.0, 0.5, 1.0]


def test_parameters_to_vector_round_trip():
    net = nn.Linear(3, 2)
    vec = nn.utils.parameters_to_vector(net.parameters())
    assert vec.shape == ddp.Size([8])
    nn.utils.vector_to_parameters(ddp.arange(8, dtype=ddp.float32), net.parameters())
    assert net.bias.detach().numpy().tolist() == [6.0, 7.0]
    with pytest.raises(RuntimeError, match="8 elements"):
        nn.utils.vector_to_parameters(ddp.zeros(7), net.parameters())


def test_deepcopy_module():
    net = Net()
    clone = copy.deepcopy(net)
    assert clone.fc1.weight is not net.fc1.weight
    np.testing.assert_array_equal(clone.fc1.weight.detach().numpy(),
                                  net.fc1.weight.detach().numpy())
    assert not np.shares_memory(clone.fc1.weight.array, net.fc1.weight.array)


# ------------------------------------------------------------------- modules against torch
def _compare(d_mod, t_mod, x, rtol=1e-5, atol=1e-6, target=None):
    """Forward and backward in ddp and torch; compare output, input grad and param grads."""
    copy_from_torch(d_mod, t_mod)
    floating = x.dtype.kind == "f"
    dx = ddp.tensor(x, requires_grad=floating)
    tx = torch.tensor(x, requires_grad=floating)
    d_out, t_out = d_mod(dx), t_mod(tx)
    np.testing.assert_allclose(d_out.detach().numpy(), t_out.detach().numpy(), rtol=rtol,
                               atol=atol)
    w = np.random.default_rng(1).standard_normal(tuple(t_out.shape)).astype(x.dtype
                                                                            if floating
                                                                            else np.float32)
    (d_out * ddp.tensor(w)).sum().backward()
    (t_out * torch.tensor(w)).sum().backward()
    if floating:
        np.testing.assert_allclose(dx.grad.numpy(), tx.grad.numpy(), rtol=rtol, atol=atol)
    t_params = dict(t_mod.named_parameters())
    for name, p in d_mod.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), t_params[name].grad.numpy(), rtol=rtol,
                                   atol=atol, err_msg=name)


@pytest.mark.parametrize("name", ["linear", "conv", "pool", "embedding", "layernorm", "gelu",
                                  "gelu_tanh", "tanh", "sigmoid", "softmax", "flatten", "relu",
                                  "identity"])
def test_module_forward_backward_vs_torch(name):
    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    x2 = rng.standard_normal((4, 5)).astype(np.float32)
    cases = {
        "linear": (lambda M: M.Linear(5, 3), x2),
        "conv": (lambda M: M.Conv2d(3, 4, 3, stride=2, padding=1), x4),
        "pool": (lambda M: M.MaxPool2d(2), x4),
        "embedding": (lambda M: M.Embedding(7, 3, padding_idx=1),
                      np.array([[1, 2, 6], [2, 2, 0]], dtype=np.int64)),
        "layernorm": (lambda M: M.LayerNorm(5), x2),
        "gelu": (lambda M: M.GELU(), x2),
        "gelu_tanh": (lambda M: M.GELU(approximate="tanh"), x2),
        "tanh": (lambda M: M.Tanh(), x2),
        "sigmoid": (lambda M: M.Sigmoid(), x2),
        "softmax": (lambda M: M.Softmax(dim=1), x2),
        "flatten": (lambda M: M.Flatten(), x4),
        "relu": (lambda M: M.ReLU(), x2),
        "identity": (lambda M: M.Identity(), x2),
    }
    build, x = cases[name]
    torch.manual_seed(0)
    if name.startswith("gelu"):  # both within their bound of the truth (_helpers.GELU_*)
        _compare(build(nn), build(torch.nn), x,
                 atol=(GELU_DDP_FORWARD + GELU_TORCH_FORWARD) * EPS32 * np.abs(x).max())
    else:
        _compare(build(nn), build(torch.nn), x)


def test_losses_vs_float64_truth_and_torch():
    # Truth: torch's float64 losses on the same float32 inputs. Gradients against torch's float32
    # at rtol 1e-5 (84 ulp): each side's softmax is within a few ulp of the truth.
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    target = np.array([0, 1, 3, 3, 2, -100])
    kept = target != -100
    x64 = logits.astype(np.float64)
    lse = np.log(np.exp(x64).sum(axis=1))
    ce_weight = np.array([1.0, 2.0, 0.5, 1.0])
    w_t = ce_weight[target[kept]]
    # CE is a weighted mean of n terms lse_i - x_ij, each within ~4 EPS32 of its operands' size
    # |lse_i| + max_j |x_ij|; the n-term sum adds n/2 and the division 1/2 of the mean's size
    n = int(kept.sum())
    ce_scale = (w_t * (np.abs(lse[kept]) + np.abs(x64[kept]).max(axis=1))).sum() / w_t.sum()
    # NLL on raw values, summed: n exact float32 terms added in float32, (n - 1)/2 of their size
    nll_scale = np.abs(x64[kept, target[kept]]).sum()
    for make, bound in [
        (lambda M, T: M.CrossEntropyLoss(weight=T.tensor(ce_weight.tolist()),
                                         label_smoothing=0.05),
         (4 + n / 2 + 1) * EPS32 * ce_scale),
        (lambda M, T: M.NLLLoss(reduction="sum"), (n - 1) / 2 * EPS32 * nll_scale),
    ]:
        dx = ddp.tensor(logits, requires_grad=True)
        tx = torch.tensor(logits, requires_grad=True)
        dl = make(nn, ddp)(dx, ddp.tensor(target))
        tl = make(torch.nn, torch)(tx, torch.tensor(target))
        truth = make(torch.nn, torch).double()(torch.tensor(x64), torch.tensor(target))
        assert dl.dtype == ddp.float32
        assert_within(float(dl), float(truth), bound, "loss")
        dl.backward()
        tl.backward()
        np.testing.assert_allclose(dx.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-7)
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32)
    da = ddp.tensor(a, requires_grad=True)
    dl = nn.MSELoss()(da, ddp.tensor(b))
    diff = a.astype(np.float64) - b
    m = diff.size
    # a mean of m positive squares: each square 1.5 ulp, the sum (m - 1)/2, the division 1/2
    assert_within(float(dl), np.mean(diff**2), (1.5 + (m - 1) / 2 + 0.5) * EPS32 * np.mean(diff**2),
                  "mse loss")
    dl.backward()
    # 2 (a - b) / m: the difference, the constant and the product round by 1/2 ulp each
    assert_within(da.grad.numpy(), 2 * diff / m, 1.5 * EPS32 * np.abs(2 * diff / m),
                  "mse gradient")


def test_linear_wrong_in_features_names_shapes():
    with pytest.raises(RuntimeError, match=r"in_features=4.*\(2, 5\).*\(3, 4\)"):
        nn.Linear(4, 3)(ddp.randn(2, 5))


def test_dropout_module_train_and_eval():
    drop = nn.Dropout(0.5)
    x = ddp.ones(100, 100)
    assert 0.4 < float((drop(x) == 0).float().mean()) < 0.6
    drop.eval()
    assert drop(x) is x
