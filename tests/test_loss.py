"""The fused, chunked lm_head + weighted cross-entropy against the reference run in float64.

Every case draws fresh random inputs, runs fused_linear_cross_entropy in fp32 (or bf16) and
linear_cross_entropy_reference on float64 copies, and compares the loss and the gradients of
hidden, weight (and bias / token weights when they require grad) by relative error
||fused - ref|| / ||ref||: at most FP32_TOL = 1e-5 in fp32; in bf16 within twice the error of the
reference run on the same bf16 inputs (BF16_FACTOR).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from models.loss import (_chunk_stats_fusable, chunk_stats, default_chunk_size, fused_linear_cross_entropy,
                         linear_cross_entropy_reference, token_cross_entropy)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

# fp32 against float64 on the same inputs: the logits are sums of d <= 32 products and the weight
# gradient a sum over N <= 250 tokens, plus a few element-wise roundings (u = 2**-24 = 6e-8 each).
# Such sums carry at most (d + N) u = 1.7e-5 of the sum of their terms' sizes, and about
# sqrt(d + N) u = 1e-6 in practice (roundings of random sign; a norm-wise relative error averages
# them). FP32_TOL is 10x that model (within the worst case; measured over this file: at most 2.2e-6,
# with logits ~1e4; typically 3e-7); a wrong formula is off by O(1).
FP32_TOL = 10 * math.sqrt(32 + 250) * 2.0 ** -24  # = 1.0e-5
# bf16 has an 8-bit significand (unit roundoff 2**-8 = 0.4%): the logits, dz = w * (softmax - onehot)
# and the matmul outputs are each rounded once, and softmax turns a logit's rounding (2**-8 |z|) into
# a relative error of the probabilities, so no useful a-priori bound holds. Instead the fused loss in
# bf16 is held to the reference's own bf16 error: linear_cross_entropy_reference run on the same bf16
# inputs (its logits in bf16, F.cross_entropy in fp32, autograd's gradients in bf16) and compared with
# the same float64 result. Each of loss and gradients must be within BF16_FACTOR times the reference's
# error plus FP32_TOL (measured: ours 1.0-1.22x the reference's, 0.23-0.29% for the gradients, 2e-6 to
# 4e-5 for the loss); a loss or softmax rounded to bf16, a wrong formula, are off by >= 2**-8 or O(1).
BF16_FACTOR = 2


def make_inputs(N=200, d=32, V=1000, bias=False, seed=0, scale=1.0, ignore_frac=0.2, dtype=torch.float32):
    """hidden [N, d], weight [V, d], targets [N] with ~ignore_frac at -100, weights in [0, 2), bias [V]."""
    g = torch.Generator().manual_seed(seed)
    hidden = (scale * torch.randn(N, d, generator=g)).to(dtype)
    weight = (torch.randn(V, d, generator=g) / d**0.5).to(dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.rand(N, generator=g) < ignore_frac] = -100
    token_weights = 2 * torch.rand(N, generator=g)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    return hidden, weight, targets, token_weights, b


def run(fn, hidden, weight, targets, token_weights, bias=None, grad_scale=1.0, wgrad=False, **kw):
    """Loss and gradients of fn on leaf copies of the inputs (grad_scale multiplies the loss first)."""
    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if bias is not None else None
    w = token_weights.clone().requires_grad_(wgrad)
    loss = fn(h, W, targets, w, bias=b, **kw)
    (loss * grad_scale).backward()
    grads = {"hidden": h.grad, "weight": W.grad}
    if b is not None:
        grads["bias"] = b.grad
    if wgrad:
        grads["token_weights"] = w.grad
    return loss.detach(), grads


def reference64(hidden, weight, targets, token_weights, bias=None, **kw):
    d64 = lambda t: t.double() if t is not None else None  # noqa: E731
    return run(linear_cross_entropy_reference, d64(hidden), d64(weight), targets, d64(token_weights),
               bias=d64(bias), **kw)


def rel_err(a, ref):
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_matches(got, ref):
    (loss, grads), (ref_loss, ref_grads) = got, ref
    assert torch.isfinite(loss), loss
    assert rel_err(loss, ref_loss) <= FP32_TOL, ("loss", loss.item(), ref_loss.item())
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert torch.isfinite(grads[name]).all(), name
        assert rel_err(grads[name], ref_grads[name]) <= FP32_TOL, (name, rel_err(grads[name], ref_grads[name]))


def assert_matches_bf16(got, ref, ref_bf16):
    """got (the fused loss in bf16) against ref (float64), each of loss and gradients within
    BF16_FACTOR times the reference bf16 run's own error (ref_bf16) plus FP32_TOL."""
    (loss, grads), (ref_loss, ref_grads), (loss16, grads16) = got, ref, ref_bf16
    assert torch.isfinite(loss), loss
    assert rel_err(loss, ref_loss) <= BF16_FACTOR * rel_err(loss16, ref_loss) + FP32_TOL, ("loss", loss, ref_loss)
    assert grads.keys() == ref_grads.keys() == grads16.keys()
    for name in ref_grads:
        assert torch.isfinite(grads[name]).all(), name
        err, err16 = rel_err(grads[name], ref_grads[name]), rel_err(grads16[name], ref_grads[name])
        assert err <= BF16_FACTOR * err16 + FP32_TOL, (name, err, err16)


@pytest.mark.parametrize("N, chunk_size, bias", [
    (200, 64, False),    # N not a multiple of the chunk size (64, 64, 64, 8)
    (200, 64, True),     # with an lm_head bias
    (200, None, False),  # default chunk (a power of two >= N here: one chunk)
    (200, 1000, True),   # chunk_size larger than N
    (37, 1, False),      # one token per chunk
])
def test_matches_reference(N, chunk_size, bias):
    x = make_inputs(N=N, bias=bias, seed=N + (chunk_size or 0))
    assert_matches(run(fused_linear_cross_entropy, *x, chunk_size=chunk_size), reference64(*x))


def test_whole_chunk_ignored():
    hidden, weight, targets, tw, _ = make_inputs(N=192, V=700, seed=1)
    targets[64:128] = -100  # chunk 2 of 3 has no counted token
    got = run(fused_linear_cross_entropy, hidden, weight, targets, tw, chunk_size=64)
    assert_matches(got, reference64(hidden, weight, targets, tw))
    assert (got[1]["hidden"][64:128] == 0).all()  # exactly zero, not just small


def test_all_ignored_and_zero_weights_give_exact_zeros():
    hidden, weight, targets, tw, b = make_inputs(N=150, bias=True, seed=2)
    for t, w in [(torch.full_like(targets, -100), tw), (targets, torch.zeros_like(tw))]:
        loss, grads = run(fused_linear_cross_entropy, hidden, weight, t, w, bias=b, chunk_size=64)
        assert loss.item() == 0.0
        assert all((g == 0).all() for g in grads.values())


def test_mixed_zero_weights():
    hidden, weight, targets, tw, _ = make_inputs(N=160, seed=3)
    tw[::3] = 0.0
    x = (hidden, weight, targets, tw)
    assert_matches(run(fused_linear_cross_entropy, *x, chunk_size=48), reference64(*x))


def test_unit_weights_equal_mean_cross_entropy_times_count():
    hidden, weight, targets, _, _ = make_inputs(N=250, seed=4)
    ones = torch.ones(250)
    loss = fused_linear_cross_entropy(hidden, weight, targets, ones, chunk_size=100)
    mean = F.cross_entropy(hidden.double() @ weight.double().T, targets)  # mean over non-ignored tokens
    n = (targets != -100).sum()
    assert abs(loss.item() - (mean * n).item()) <= FP32_TOL * (mean * n).item()


@pytest.mark.parametrize("seed", [5, 6])
def test_large_logits(seed):
    # seed 6 has near-tied top logits: forming softmax as exp(z - lse) instead of exp(z - max) / s
    # puts its gradient error at 2e-5, over the bound (the exp(z - max) form: 2e-6, as eager fp32)
    x = make_inputs(N=128, d=16, V=600, scale=3000.0, seed=seed)  # logits ~ 1e4
    assert (x[0].abs().max() * x[1].abs().max()) > 1e3
    got = run(fused_linear_cross_entropy, *x, chunk_size=50)
    assert got[0].item() > 1e4  # the loss really is large, and finite (checked in assert_matches)
    assert_matches(got, reference64(*x))


def test_grad_output_scaling_and_token_weight_grad():
    x = make_inputs(N=120, bias=True, seed=6)
    kw = dict(grad_scale=3.7 / 95, wgrad=True)  # loss * 3.7 / denominator, as a caller would
    assert_matches(run(fused_linear_cross_entropy, *x, chunk_size=32, **kw), reference64(*x, **kw))


def test_custom_ignore_index_and_leading_dims():
    hidden, weight, targets, tw, _ = make_inputs(N=96, seed=7, ignore_frac=0.0)
    targets[:10] = 5  # ignore_index=5: every token with target 5 is dropped
    got = fused_linear_cross_entropy(hidden.view(4, 24, -1), weight, targets.view(4, 24), tw.view(4, 24),
                                     ignore_index=5, chunk_size=40)
    ref = linear_cross_entropy_reference(hidden.double(), weight.double(), targets, tw.double(), ignore_index=5)
    assert rel_err(got, ref) <= FP32_TOL


def test_tied_embedding():
    """The weight is an nn.Embedding's: lookup gradient and loss gradient add up in one matrix."""
    N, d, V = 140, 24, 800
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(0, V, (N,), generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[:20] = -100
    tw = 2 * torch.rand(N, generator=g)
    proj = torch.randn(d, d, generator=g) / d**0.5
    grads = []
    for dtype, fn, kw in [(torch.float32, fused_linear_cross_entropy, dict(chunk_size=32)),
                          (torch.float64, linear_cross_entropy_reference, {})]:
        emb = torch.nn.Embedding(V, d).to(dtype)
        with torch.no_grad():
            emb.weight.copy_(torch.randn(V, d, generator=torch.Generator().manual_seed(9)))
        hidden = torch.tanh(emb(ids) @ proj.to(dtype))  # a toy "model" between embedding and head
        fn(hidden, emb.weight, targets, tw.to(dtype), **kw).backward()
        grads.append(emb.weight.grad)
    assert rel_err(*grads) <= FP32_TOL


def test_frozen_weight():
    hidden, weight, targets, tw, _ = make_inputs(N=100, seed=10)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, targets, tw, chunk_size=30)  # weight.requires_grad False
    loss.backward()
    ref_loss, ref = reference64(hidden, weight, targets, tw)
    assert weight.grad is None
    assert rel_err(h.grad, ref["hidden"]) <= FP32_TOL
    with torch.no_grad():  # no input needs a gradient: just the value
        assert rel_err(fused_linear_cross_entropy(hidden, weight, targets, tw), ref_loss) <= FP32_TOL


def test_backward_twice_raises_instead_of_wrong_gradients():
    hidden, weight, targets, tw, _ = make_inputs(N=80, seed=11)
    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, W, targets, tw, chunk_size=32)
    (2 * loss).backward(retain_graph=True)  # the stored gradients are now scaled by 2, in place
    with pytest.raises(RuntimeError, match="backward twice"):
        loss.backward()


def test_bf16_inputs():
    x = make_inputs(N=160, d=32, V=900, bias=True, seed=12, dtype=torch.bfloat16)
    loss, grads = run(fused_linear_cross_entropy, *x, chunk_size=64)
    assert loss.dtype == torch.float32 and grads["hidden"].dtype == torch.bfloat16
    assert grads["weight"].dtype == torch.bfloat16 and grads["bias"].dtype == torch.bfloat16
    ref_bf16 = run(linear_cross_entropy_reference, *x)  # the reference's own bf16 error: BF16_FACTOR
    assert_matches_bf16((loss, grads), reference64(*x), ref_bf16)  # float64 on the same bf16 values


def test_cpu_autocast_bf16():
    hidden, weight, targets, tw, _ = make_inputs(N=160, seed=13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = run(fused_linear_cross_entropy, hidden, weight, targets, tw, chunk_size=64)
        ref_bf16 = run(linear_cross_entropy_reference, hidden, weight, targets, tw)  # its own bf16 error
    assert loss.dtype == torch.float32 and grads["weight"].dtype == torch.float32  # fp32 master grads
    bf = lambda t: t.bfloat16().float()  # noqa: E731  (what the bf16 matmuls see)
    ref = reference64(bf(hidden), bf(weight), targets, tw)
    assert_matches_bf16((loss, grads), ref, ref_bf16)
    # the matmuls did run in bf16: against the unrounded fp32 inputs the error is bf16-sized
    exact = reference64(hidden, weight, targets, tw)
    assert rel_err(grads["weight"], exact[1]["weight"]) > 100 * FP32_TOL


def test_dtype_mismatch_without_autocast_raises():
    hidden, weight, targets, tw, _ = make_inputs(N=10, V=50)
    with pytest.raises(ValueError, match="autocast"):
        fused_linear_cross_entropy(hidden.bfloat16(), weight, targets, tw)


class MaxNumel(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self, ignore=()):
        super().__init__()
        self.max, self.ignore = 0, set(ignore)  # data pointers of tensors not to count (the inputs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.data_ptr() not in self.ignore:
                self.max = max(self.max, t.numel())
        return out


def test_never_materializes_full_logits():
    N, V = 256, 2000
    hidden, weight, targets, tw, _ = make_inputs(N=N, V=V, seed=14)
    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with MaxNumel() as m:
        fused_linear_cross_entropy(h, W, targets, tw, chunk_size=32).backward()
    assert m.max == 32 * V  # one chunk of logits, not N * V
    with MaxNumel() as m:
        linear_cross_entropy_reference(h, W, targets, tw)
    assert m.max == N * V  # the check above would notice full logits


def test_no_grad_computes_only_the_loss():
    """Validation runs under torch.no_grad: no gradient buffers ([V, d] fp32 weight gradient, [N, d]
    hidden gradient) and no gradient matmuls, even though the inputs require grad."""
    N, V, d = 256, 2000, 32
    hidden, weight, targets, tw, _ = make_inputs(N=N, V=V, d=d, seed=15)
    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    inputs = {h.data_ptr(), W.data_ptr()}  # weight.to(fp32) returns W itself: not a new tensor

    def largest_new_tensor(grad):
        with torch.set_grad_enabled(grad), MaxNumel(ignore=inputs) as m:
            loss = fused_linear_cross_entropy(h, W, targets, tw, chunk_size=16)
        return m.max, loss

    assert largest_new_tensor(True)[0] == V * d > 16 * V  # with grad: the weight-gradient buffer
    biggest, loss = largest_new_tensor(False)
    assert biggest == 16 * V  # one chunk of logits and nothing bigger
    assert rel_err(loss, reference64(hidden, weight, targets, tw)[0]) <= FP32_TOL


def test_default_chunk_size():
    assert default_chunk_size(10**6, 64000) == 2048 and default_chunk_size(10**6, 151936) == 512
    assert default_chunk_size(10**6, 151936, "cuda") == 512  # the budget is per device
    assert default_chunk_size(10**6, 151936, "cpu") == 1024 and default_chunk_size(10**6, 64000, "cpu") == 4096
    assert default_chunk_size(10**6, 64000, "mps") == 2048  # unknown devices take CUDA's budget
    assert default_chunk_size(100, 64000) == 100 and default_chunk_size(5, 10**9) == 1


def ce_bound(hidden, weight, bias, ref, unit):
    """Worst-case |computed - exact| of each token's cross-entropy when the logits z = h @ W^T + b are
    formed with relative rounding `unit` per operand/output (plus the fp32 accumulation of the d + 1
    terms) and the statistics (chunk_stats) in fp32. ce = lse(z) - z_y moves by at most twice the largest
    logit error; then in fp32 (u = 2**-24): m - z_y is rounded once (<= u ce), each of the V terms
    exp(z - m) carries u |z - m| from the subtraction (<= u / e of the term's size 1 after weighting)
    and 2 u from exp (1 ulp), their sum (V - 1) u of s >= 1, log s its own u, and the last add u ce."""
    u, d, V = 2.0 ** -24, hidden.shape[1], weight.shape[0]
    terms = hidden.double().abs() @ weight.double().abs().T + bias.double().abs()  # (N, V) sum of |terms| per logit
    zerr = ((d + 1) * u + unit) * terms.amax(1)  # (N,) the largest logit error of the token
    return 2 * zerr + (V * (1 + 1 / math.e) + 3 + 3 * ref.abs()) * u


@pytest.mark.parametrize("N, chunk_size", [(150, 64), (37, None)])
def test_token_cross_entropy_matches_reference(N, chunk_size):
    """The per-token CE validation uses (no gradient, chunked) equals F.cross_entropy(reduction="none")."""
    hidden, weight, targets, _, bias = make_inputs(N=N, bias=True, seed=11)
    ref = F.cross_entropy(F.linear(hidden.double(), weight.double(), bias.double()), targets, reduction="none")
    got = token_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and (got[targets == -100] == 0).all()
    # fp32 logits: no extra rounding beyond the accumulation (unit 0); the bound is ~1.2e-4 per token
    # (V = 1000 dominates), measured 8e-7; a wrong target, bias or row moves ce by O(1)
    assert ((got.double() - ref).abs() <= ce_bound(hidden, weight, bias, ref, 0.0)).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmul in bf16, the statistics in fp32
        got16 = token_cross_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk_size)
    # bf16 (unit roundoff 2**-8): h, W and b are rounded to bf16 and so is the matmul's output (their
    # products are exact in its fp32 accumulator): <= 3 x 2**-8 of each logit's sum of |terms|; the
    # bound is ~0.23 per token, measured 0.011 (the previous allowance, 5% of max ce, was 0.53)
    assert ((got16.double() - ref).abs() <= ce_bound(hidden, weight, bias, ref, 3 * 2.0 ** -8)).all()


def test_fusable_chunk_stats_equals_the_in_place_one():
    """The functional form torch.compile gets computes what the eager in-place chunk_stats does."""
    g = torch.Generator().manual_seed(3)
    z = 30 * torch.randn(40, 500, generator=g)
    y, w = torch.randint(0, 500, (40,), generator=g), 2 * torch.rand(40, generator=g)
    w[:5] = 0  # ignored tokens arrive with weight 0
    ce, dz = _chunk_stats_fusable(z, y, w)
    ce_ref, dz_ref = chunk_stats(z.clone(), y, w, need_grad=True)
    # eager, the two run the same fp32 operations in the same order on the same values (max, z - m,
    # exp, the row sum, m - z_y + log s, e * (w / s), minus w at the target: x - w == x + (-w) in
    # IEEE arithmetic), so they agree bit for bit: tolerance 0 (measured 0; compiled, inductor may
    # reorder: that is test_compiled_elementwise_matches_reference's float64 check)
    assert torch.equal(ce, ce_ref) and torch.equal(dz, dz_ref)
    assert (dz[:5] == 0).all()


@pytest.mark.slow
def test_compiled_elementwise_matches_reference():
    """compiled=True (each chunk's element-wise work under torch.compile) against float64, in the
    cases that break chunked losses: N not a multiple of the chunk, a bias, a wholly ignored chunk,
    zero weights, logits ~1e4, a one-row chunk; and under CPU bf16 autocast. One graph per dtype
    and vocabulary serves every chunk length (counted)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    fused = lambda *a, **k: fused_linear_cross_entropy(*a, compiled=True, **k)  # noqa: E731
    x = make_inputs(N=200, bias=True, seed=21)
    assert_matches(run(fused, *x, chunk_size=64), reference64(*x))
    hidden, weight, targets, tw, _ = make_inputs(N=96, seed=22)
    targets[32:64] = -100
    tw[:10] = 0
    assert_matches(run(fused, hidden, weight, targets, tw, chunk_size=32), reference64(hidden, weight, targets, tw))
    x = make_inputs(N=100, seed=23, scale=300.0)  # logits ~1e4
    assert_matches(run(fused, *x, chunk_size=50), reference64(*x))
    x = make_inputs(N=129, seed=25)  # a last chunk of one row (eager: a dynamic size cannot start at 1)
    assert_matches(run(fused, *x, chunk_size=64), reference64(*x))
    hidden, weight, targets, tw, _ = make_inputs(N=128, seed=24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(fused, hidden, weight, targets, tw, chunk_size=64)
        ref_bf16 = run(linear_cross_entropy_reference, hidden, weight, targets, tw)  # its own bf16 error
    assert_matches_bf16(got, reference64(hidden, weight, targets, tw), ref_bf16)
    assert 1 <= counters["frames"]["ok"] <= 2, dict(counters["frames"])  # fp32 and bf16: one graph each
    torch._dynamo.reset()


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A machine where torch.compile cannot build (no Triton, no C++ compiler) still trains: one
    warning, then the eager chunk statistics, with the same result."""
    import models.loss as loss_mod

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(loss_mod, "_compile_failed", False)
    monkeypatch.setattr(loss_mod, "_compiled", lambda: broken)
    x = make_inputs(N=100, seed=31)
    with pytest.warns(UserWarning, match="computing them eagerly"):
        got = run(fused_linear_cross_entropy, *x, chunk_size=32, compiled=True)
    assert loss_mod._compile_failed
    assert_matches(got, reference64(*x))
