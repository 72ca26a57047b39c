"""Token-weighted cross-entropy of an lm_head: a readable reference and a fused, chunked version.

Both compute, for final hidden states h [N, d], an lm_head weight W [V, d] (and optional bias b),
targets y [N] (ignore_index = not counted) and per-token weights w [N]:

    loss = sum over tokens t with y_t != ignore_index of  w_t * ce_t,
    ce_t = logsumexp_v(z_tv) - z_t,y_t,   z = h @ W^T + b

as one fp32 scalar. The caller divides by the global answer-token count (docs/loss.md).

Why fused. The reference materializes the logits z [N, V]: Qwen2.5-0.5B (V = 151936) at 16k
tokens holds 5 GB of bf16 logits, and the usual path (upcast to fp32, log_softmax, its gradient)
peaks around 25 GB, more than the rest of a 0.5B model's training step. The fused version walks
over the tokens in chunks of C rows and never holds more than [C, V] logits.

Why the gradient is computed in the forward pass. The loss is a weighted sum, so its gradient
with respect to the logits is known as soon as the chunk's softmax is:

    dloss/dz_tv = w_t * (softmax(z_t)_v - [v == y_t])          (0 for ignored tokens)
    dloss/dh    = dz @ W          dloss/dW = dz^T @ h          dloss/db = sum_t dz_t
    dloss/dw_t  = ce_t

so each chunk's logits are used once, then dropped: grad_hidden is written chunk by chunk (in
hidden's dtype) and grad_weight / grad_bias are accumulated in fp32 buffers. backward only
multiplies the stored gradients, in place, by grad_output (a 0-dim tensor, e.g. 1 / token_count);
so one loss supports one backward (a second, with retain_graph=True, raises).

Dtypes: the matmuls run in the autocast dtype when autocast is enabled for the input's device
(bf16 under torch.autocast("cuda", dtype=torch.bfloat16)), else in the inputs' dtype (fp32 on
CPU); log-sum-exp, softmax, the loss and all accumulations are fp32. No .item(), no
data-dependent Python branches, no boolean indexing: nothing waits on the GPU.
"""
import functools
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Default chunk: the largest power of two C with C * V <= CHUNK_ELEMENTS[device] logits.
# CUDA: 2**27, i.e. at most 512 MB of fp32 logits per chunk (with the bf16 matmul output and bf16
# dz, ~1 GB of temporaries under autocast): V = 64000 (AraGPT2) -> C = 2048, V = 151936 (Qwen2.5)
# -> C = 512. Not smaller, because every chunk also reads and writes the whole fp32 [V, d]
# weight-gradient buffer (545 MB for Qwen2.5): with C in the hundreds that traffic costs as much as
# the matmuls themselves. CPU: 2**28 (1 GB of fp32 logits: Qwen2.5 -> 1024 rows, AraGPT2 -> 4096),
# from `bench/loss.py --sweep 128,256,512,1024 --tokens 1024` on 2 cores: smaller chunks cost
# time (Qwen2.5: 8.3 s at 1024 rows, 9.6-10.0 s at 256-512, 14.3 s at 128; AraGPT2: 3.3 s at
# 512 and 1024, 4.3 s at 128), because each chunk re-reads and re-writes the [V, d] gradient;
# AraGPT2's 2048-4096 rows are extrapolated (the sweep stopped at 1024).
CHUNK_ELEMENTS = {"cuda": 2**27, "cpu": 2**28}


def default_chunk_size(n_tokens, vocab_size, device_type="cuda"):
    """Rows per chunk: a power of two with chunk * vocab_size <= CHUNK_ELEMENTS, at most n_tokens."""
    budget = CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cuda"])
    c = 1 << max(0, (budget // vocab_size).bit_length() - 1)
    return max(1, min(n_tokens, c))


def linear_cross_entropy_reference(hidden, weight, targets, token_weights, bias=None, ignore_index=-100):
    """Sum of token_weights * cross-entropy over non-ignored tokens, with the full logits in fp32.

    (float64 inputs stay float64: the tests use this on float64 copies as the ground truth.)
    """
    logits = F.linear(hidden, weight, bias)  # (N, V): the memory the fused version avoids
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)  # 0 where ignored
    return (ce * token_weights.to(ce.dtype)).sum()


def chunk_stats(z, y, w, need_grad):
    """One chunk's per-token ce [C] (fp32) and dz = w * (softmax(z) - onehot(y)) [C, V] in z's dtype
    (None without need_grad), from its logits z [C, V]; eager, six passes over [C, V], in place on
    z's fp32 form (so an fp32 z is consumed; pass a temporary, so a bf16 one is freed early).

    log-sum-exp = m + log(s) with s = sum(exp(z - m)), m the row max; ce and the softmax are formed
    from (z - m) and s directly, never as z - lse: at logits ~1e4 rounding the lse to fp32 alone
    would cost ~1e-3 absolute in every probability.
    """
    dtype = z.dtype
    z = z.float()  # (C, V) fp32 (no copy when the matmul ran in fp32)
    m = z.amax(dim=1)  # (C,) row max
    ce = m - z.gather(1, y[:, None]).squeeze(1)  # (C,) max - target logit
    z.sub_(m[:, None]).exp_()  # z := exp(z - m), in place: the logits are not needed any more
    s = z.sum(dim=1)  # (C,) >= 1
    ce = ce + s.log()  # (C,) = logsumexp - target logit
    if not need_grad:
        return ce, None
    z.mul_((w / s)[:, None])  # z := w * softmax
    z.scatter_add_(1, y[:, None], -w[:, None])  # z := dz = w * (softmax - onehot)
    return ce, z.to(dtype)


def _chunk_stats_fusable(z, y, w):
    """chunk_stats(z, y, w, need_grad=True) written without in-place ops, for torch.compile: the
    reductions and the gradient become a few kernels that read z (a bf16 z is never copied to
    fp32) and write dz once, instead of six passes with an fp32 copy."""
    zf = z.float()
    m = zf.amax(dim=1, keepdim=True)  # (C, 1)
    e = torch.exp(zf - m)  # (C, V), never stored by the compiled kernels
    s = e.sum(dim=1, keepdim=True)  # (C, 1)
    ce = (m - zf.gather(1, y[:, None]) + s.log()).squeeze(1)  # (C,)
    target = torch.arange(z.shape[1], device=z.device)[None, :] == y[:, None]  # (C, V) one-hot, not stored
    dz = e * (w[:, None] / s) - torch.where(target, w[:, None], 0.0)
    return ce, dz.to(z.dtype)


@functools.cache
def _compiled():
    return torch.compile(_chunk_stats_fusable)


def chunk_stats_compiled(z, y, w, need_grad=True):
    """chunk_stats through torch.compile (_chunk_stats_fusable). The chunk length is marked dynamic,
    so every length shares one graph per vocabulary size (a 1-row chunk goes the eager way: a
    dynamic dimension cannot start at size 1). Where compiling fails (no Triton or C++ compiler),
    it says so once and computes eagerly from then on."""
    global _compile_failed
    if need_grad and not _compile_failed and z.shape[0] > 1:
        import torch._dynamo  # (not imported by `import torch` on every version)
        for t in (z, y, w):
            torch._dynamo.mark_dynamic(t, 0)
        try:
            return _compiled()(z, y, w)
        except torch.cuda.OutOfMemoryError:  # a real out-of-memory, not a compiler failure
            raise
        except Exception as e:  # the inductor's failures have many types; the eager path is always right
            _compile_failed = True
            warnings.warn(f"fused loss: torch.compile of the chunk statistics failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); computing them eagerly")
    return chunk_stats(z, y, w, need_grad)


_compile_failed = False


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Chunked forward that also produces the gradients; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, bias, ignore_index, chunk_size, dtype, grad_enabled,
                compiled):
        N, V = hidden.shape[0], weight.shape[0]
        # needs_input_grad says True under torch.no_grad too: without grad_enabled a validation
        # pass would compute (and allocate) every gradient it then throws away
        need_h, need_W, _, need_w, need_b = (n and grad_enabled for n in ctx.needs_input_grad[:5])
        need_b = need_b and bias is not None
        need_grad = need_h or need_W or need_b
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)  # ignored ids would index out of range
        w = torch.where(valid, token_weights.float(), 0.0)  # ignored tokens weigh exactly 0
        stats = chunk_stats_compiled if compiled else chunk_stats

        W = weight.to(dtype)  # cast once (autocast would also cast the weight once per step)
        b = bias.to(dtype) if bias is not None else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_W = None  # the first chunk's product becomes it: no zero-filled [V, d] buffer
        grad_b = torch.zeros(V, dtype=torch.float32, device=weight.device) if need_b else None
        ce_all = torch.empty(N, dtype=torch.float32, device=hidden.device) if need_w else None

        for i in range(0, N, chunk_size):
            h = hidden[i:i + chunk_size].to(dtype)  # (C, d)
            y, wc = safe_targets[i:i + chunk_size], w[i:i + chunk_size]
            ce, dz = stats(F.linear(h, W, b), y, wc, need_grad)  # from the (C, V) logits, not kept
            loss += (wc * ce).sum()
            if need_w:
                ce_all[i:i + chunk_size] = torch.where(valid[i:i + chunk_size], ce, 0.0)
            if need_b:
                grad_b += dz.sum(0, dtype=torch.float32)
            if need_h:
                grad_h[i:i + chunk_size] = dz @ W  # (C, d)
            if need_W and grad_W is None:
                grad_W = (dz.t() @ h).float()  # (V, d) = (V, C) @ (C, d), fp32 (a copy only under bf16)
            elif need_W and dtype == torch.float32:
                grad_W.addmm_(dz.t(), h)  # (V, d) += (V, C) @ (C, d), no temporary
            elif need_W:
                grad_W += dz.t() @ h  # (V, d): bf16 GEMM (fp32 inside), added into the fp32 sum
            del dz  # free this chunk's buffer before the next chunk allocates its own
        if need_W and grad_W is None:  # no tokens at all
            grad_W = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)

        ctx.save_for_backward(grad_h, grad_W, grad_b, ce_all)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None, token_weights.dtype)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # The stored gradients are scaled in place and handed over (a copy would be one more fp32
        # [V, d] at the peak), so a second backward through the same graph cannot work: say so.
        if getattr(ctx, "backward_done", False):
            raise RuntimeError("fused_linear_cross_entropy: backward twice through one loss (retain_graph=True) "
                               "is not supported; compute the loss again")
        ctx.backward_done = True
        grad_h, grad_W, grad_b, ce_all = ctx.saved_tensors
        W_dtype, b_dtype, w_dtype = ctx.dtypes
        gh = grad_h.mul_(grad_out) if grad_h is not None else None
        gW = grad_W.mul_(grad_out).to(W_dtype) if grad_W is not None else None
        gb = grad_b.mul_(grad_out).to(b_dtype) if grad_b is not None else None
        gw = ce_all.mul_(grad_out).to(w_dtype) if ce_all is not None else None
        return gh, gW, None, gw, gb, None, None, None, None, None


def matmul_dtype(hidden, weight):
    """The dtype the lm_head matmul runs in: autocast's when autocast is on for the device (bf16
    under torch.autocast("cuda", dtype=torch.bfloat16)), else the inputs' (which must agree)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)  # like F.linear would be
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype} (and autocast is off)")
    return hidden.dtype


def fused_linear_cross_entropy(hidden, weight, targets, token_weights, bias=None, ignore_index=-100,
                               chunk_size=None, compiled=False):
    """Same value and gradients as linear_cross_entropy_reference, without the [N, V] logits.

    hidden [N, d] (or [..., d], flattened with targets and token_weights), weight [V, d] (the lm_head
    or a tied embedding matrix: its gradient accumulates like any other use), targets [N] long,
    token_weights [N], bias [V] or None. Returns a 0-dim fp32 tensor. chunk_size = rows of hidden
    per chunk (default: default_chunk_size for the device). compiled: run each chunk's element-wise
    work as one torch.compile'd function (chunk_stats_compiled) instead of the eager chunk_stats
    (train_lm.py does under --compile on CUDA). Gradients flow to hidden, weight, bias and
    token_weights, each only when it requires grad (a frozen lm_head costs no weight gradient); under
    torch.no_grad only the loss is computed.
    """
    d = hidden.shape[-1]
    hidden, targets, token_weights = hidden.reshape(-1, d), targets.reshape(-1), token_weights.reshape(-1)
    dev, dtype = hidden.device.type, matmul_dtype(hidden, weight)
    chunk_size = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0], dev)
    grad_enabled = torch.is_grad_enabled()  # (inside forward it is always off)
    with torch.autocast(dev, enabled=False):  # dtypes inside are explicit, see the module docstring
        return FusedLinearCrossEntropy.apply(hidden, weight, targets, token_weights, bias, ignore_index,
                                             chunk_size, dtype, grad_enabled, compiled)


@torch.no_grad()
def token_cross_entropy(hidden, weight, targets, bias=None, ignore_index=-100, chunk_size=None):
    """Per-token cross-entropy [N] (fp32, 0 where ignored) of hidden [N, d] under the lm_head weight
    [V, d], chunk by chunk like fused_linear_cross_entropy and without gradients: one pass gives
    validation both the plain and the weighted loss (ce.sum() and (w * ce).sum())."""
    d = hidden.shape[-1]
    hidden, targets = hidden.reshape(-1, d), targets.reshape(-1)
    dev, dtype = hidden.device.type, matmul_dtype(hidden, weight)
    chunk_size = chunk_size or default_chunk_size(hidden.shape[0], weight.shape[0], dev)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    W, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
    ce = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.autocast(dev, enabled=False):
        for i in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[i:i + chunk_size].to(dtype), safe_targets[i:i + chunk_size]
            ce[i:i + chunk_size] = chunk_stats(F.linear(h, W, b), y, None, need_grad=False)[0]  # logits not kept
    return torch.where(valid, ce, 0.0)
