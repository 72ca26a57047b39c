"""Benchmark the lm_head + token-weighted cross-entropy: forward+backward time and peak memory.

Variants (all compute sum_t w_t * ce_t over non-ignored tokens and its gradients for hidden and
the lm_head weight):
  fused          models/loss.py fused_linear_cross_entropy (chunked, gradients in forward), each
                 chunk's element-wise work eager (chunk_stats: six passes), the default
  fused_compiled the same with compiled=True (chunk_stats_compiled, what train_lm.py --compile uses
                 on CUDA; skip with --no-compile)
  reference      models/loss.py linear_cross_entropy_reference, eager (full fp32 logits)
  compiled       the same reference under torch.compile (skip with --no-compile)
  torch_chunked  torch's own F.linear_cross_entropy(..., options=LinearCrossEntropyOptions()),
                 reduction="none" times the token weights, when this torch has it
  liger          Liger-Kernel's LigerFusedLinearCrossEntropyLoss(reduction="none") * weights
  cce            cut-cross-entropy's linear_cross_entropy(reduction="none") * weights
liger and cce are GPU-only Triton kernels, run only on CUDA when importable (else noted as skipped).

Shapes: aragpt2 (d 768, V 64000) and qwen2.5-0.5b (d 896, V 151936).

    python bench/loss.py                   # CPU, fp32, N 1024 and 2048: ~6-8 minutes on 2 cores
    python bench/loss.py --device cuda     # GPU, bf16 autocast, N 4096, 8192, 16384
    python bench/loss.py --shapes qwen2.5-0.5b --tokens 4096 --no-compile --repeats 5
    python bench/loss.py --sweep 128,256,512,1024,2048 --tokens 2048 --repeats 3   # chunk sizes, both
                                           # fused variants: the data behind CHUNK_ELEMENTS

Memory. On CUDA: torch.cuda.max_memory_allocated during the timed runs minus the bytes allocated
before the first call (inputs: hidden bf16 [N, d], lm_head weight fp32 [V, d] as fp32 master
weights under autocast, targets, token weights). On CPU there is no allocator counter, so each
(variant, shape, N) runs in a fresh subprocess and reports its peak RSS (getrusage ru_maxrss) after
the runs, and that peak minus the RSS right after the inputs were allocated. The increment includes
the weight gradient ([V, d] fp32, the same for every variant) and, for compiled, the compiler's own
memory. Time: median of --repeats forward+backward runs (default 1 on CPU, 10 on CUDA) after one warm-up
run (which is also where torch.compile compiles; on CPU the eager variants warm up on 64 tokens
only); CUDA events on the GPU, perf_counter on the CPU.

Prints one table (ratios are against reference eager at the same shape and N) and writes JSON
(--out, default bench/loss.json): {"device", "torch", "args", "results": [{variant, shape, tokens,
ms, peak_mb, abs_peak_mb, loss, note}]}.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.loss import fused_linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402

SHAPES = {"aragpt2": (768, 64000), "qwen2.5-0.5b": (896, 151936), "tiny": (64, 1000)}  # name: (d, V); tiny: smoke runs
VARIANTS = ("fused", "fused_compiled", "reference", "compiled", "torch_chunked", "liger", "cce")
DEFAULT_TOKENS = {"cpu": "1024,2048", "cuda": "4096,8192,16384"}
# torch_chunked is opt-in on CPU (--variants ...,torch_chunked): one more ~minute of matmuls
DEFAULT_VARIANTS = {"cpu": "fused,fused_compiled,reference,compiled,liger,cce", "cuda": ",".join(VARIANTS)}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--tokens", default=None, help="comma-separated N (default: cpu 1024,2048; cuda 4096,8192,16384)")
parser.add_argument("--shapes", default="aragpt2,qwen2.5-0.5b", help=f"comma-separated, from {list(SHAPES)}")
parser.add_argument("--variants", default=None, help=f"comma-separated, from {list(VARIANTS)} (default: all on "
                    f"cuda; {DEFAULT_VARIANTS['cpu']} on cpu)")
parser.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default: cpu 1, cuda 10)")
parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
parser.add_argument("--chunk-size", type=int, default=None, help="fused chunk size (default: models.loss default)")
parser.add_argument("--sweep", default=None, help="comma-separated chunk sizes: time fused and "
                    "fused_compiled at each (instead of the variant table); the fastest is marked")
parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")), help="JSON output path")
parser.add_argument("--child", action="store_true", help="internal: run one variant/shape/N here, print JSON")


def make_loss_fn(variant, args):
    """A function (hidden, weight, targets, token_weights) -> scalar, or a string saying why not."""
    cuda = args.device == "cuda"
    if variant.startswith("fused"):
        if variant == "fused_compiled" and args.no_compile:
            return "skipped (--no-compile)"
        compiled = variant == "fused_compiled"
        return lambda h, W, t, w: fused_linear_cross_entropy(h, W, t, w, chunk_size=args.chunk_size, compiled=compiled)
    if variant == "reference":
        return linear_cross_entropy_reference
    if variant == "compiled":
        return "skipped (--no-compile)" if args.no_compile else torch.compile(linear_cross_entropy_reference)
    if variant == "torch_chunked":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return f"skipped: torch {torch.__version__} has no F.linear_cross_entropy chunking"
        opts = torch.nn.LinearCrossEntropyOptions()
        return lambda h, W, t, w: (F.linear_cross_entropy(h, W, t, reduction="none", ignore_index=-100,
                                                          options=opts) * w).sum()
    if not cuda:
        return "skipped: GPU-only Triton kernel"
    try:
        if variant == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="none")
            return lambda h, W, t, w: (liger(W.to(h.dtype), h, t).float() * w).sum()
        if variant == "cce":
            from cut_cross_entropy import linear_cross_entropy
            return lambda h, W, t, w: (linear_cross_entropy(h, W.to(h.dtype), t, ignore_index=-100,
                                                            reduction="none").float() * w).sum()
    except ImportError as e:
        return f"skipped: not installed ({e.name})"
    raise ValueError(f"unknown variant {variant}")


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant, shape, N, args):
    """Time and memory of one variant at one shape and N, in this process."""
    fn = make_loss_fn(variant, args)
    row = {"variant": variant, "shape": shape, "tokens": N}
    if isinstance(fn, str):
        return {**row, "note": fn}
    d, V = SHAPES[shape]
    dev, cuda = torch.device(args.device), args.device == "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(N, d, device=dev, generator=g, dtype=torch.bfloat16 if cuda else torch.float32)
    weight = torch.randn(V, d, device=dev, generator=g).div_(d**0.5)  # fp32 master weights on both
    # (in place: a temporary [V, d] here would raise the CPU baseline, which is a peak-so-far)
    targets = torch.randint(0, V, (N,), device=dev, generator=g)
    targets[torch.rand(N, device=dev, generator=g) < 0.1] = -100  # some prompt/padding tokens
    token_weights = 0.5 + 1.5 * torch.rand(N, device=dev, generator=g)
    hidden.requires_grad_(), weight.requires_grad_()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
    base_rss = rss_mb()

    def step(n=N):
        hidden.grad = weight.grad = None
        h, t, w = (hidden, targets, token_weights) if n == N else (hidden[:n], targets[:n], token_weights[:n])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = fn(h, weight, t, w)
        loss.backward()
        return loss

    try:
        # Warm-up: compiles the compiled variant (so at full size). The CPU eager variants have nothing
        # to warm beyond library start-up, so they warm up on 64 tokens to keep the CPU run short.
        step(min(N, 64) if not cuda and "compiled" not in variant else N)
        if cuda:
            torch.cuda.synchronize()
            hidden.grad = weight.grad = None
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                loss = step()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                loss = step()
                times.append(1000 * (time.perf_counter() - t0))
    except Exception as e:  # a variant failing (OOM, missing compiler) should not end the table
        return {**row, "note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        abs_peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        abs_peak = rss_mb()
        peak = abs_peak - base_rss
    return {**row, "ms": statistics.median(times), "peak_mb": peak, "abs_peak_mb": abs_peak,
            "baseline_mb": base / 2**20 if cuda else base_rss, "loss": loss.item(), "note": ""}


def measure_in_subprocess(variant, shape, N, args):
    """CPU: a fresh process per measurement, so its peak RSS belongs to this variant alone."""
    cmd = [sys.executable, __file__, "--child", "--device", "cpu", "--variants", variant, "--shapes", shape,
           "--tokens", str(N), "--repeats", str(args.repeats)]
    cmd += ["--no-compile"] if args.no_compile else []
    cmd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        return {"variant": variant, "shape": shape, "tokens": N, "note": f"failed: {err[:120]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure_here_or_apart(variant, shape, N, args):
    """measure() on CUDA (then the cache is emptied for the next one); on CPU in a fresh process."""
    if args.device == "cpu":
        return measure_in_subprocess(variant, shape, N, args)
    r = measure(variant, shape, N, args)
    torch.cuda.empty_cache()
    return r


def sweep(args, shapes, tokens):
    """Time of fused and fused_compiled at each chunk size (--sweep): the data behind
    models/loss.py CHUNK_ELEMENTS and the choice of eager or compiled chunks. Prints one table, writes --out."""
    results = []
    for shape in shapes:
        for N in tokens:
            for chunk in [int(c) for c in args.sweep.split(",")]:
                args.chunk_size = chunk
                for variant in ("fused", "fused_compiled"):
                    r = measure_here_or_apart(variant, shape, N, args)
                    results.append({**r, "chunk_size": chunk, "chunk_elements": chunk * SHAPES[shape][1]})
                    print(f"  {variant} {shape} N={N} chunk {chunk}: "
                          + (f"{r['ms']:.0f} ms" if "ms" in r else r["note"]), file=sys.stderr)
    print(f"\ndevice {args.device}, torch {torch.__version__}, {'fp32' if args.device == 'cpu' else 'bf16 autocast'}, "
          f"median of {args.repeats} after 1 warm-up; * = fastest of its shape and N")
    print(f"{'shape':<13} {'N':>6} {'chunk':>6} {'elements':>9} {'eager ms':>9} {'compiled ms':>12}")
    timed = [r for r in results if "ms" in r]
    for shape in shapes:
        for N in tokens:
            rows = [r for r in timed if r["shape"] == shape and r["tokens"] == N]
            best = min(rows, key=lambda r: r["ms"]) if rows else None
            for chunk in sorted({r["chunk_size"] for r in rows}):
                cell = {}
                for r in rows:
                    if r["chunk_size"] == chunk:
                        cell[r["variant"]] = f"{r['ms']:.1f}" + ("*" if r is best else "")
                print(f"{shape:<13} {N:>6} {chunk:>6} {'2^%.1f' % math.log2(chunk * SHAPES[shape][1]):>9} "
                      f"{cell.get('fused', '-'):>9} {cell.get('fused_compiled', '-'):>12}")
    out = {"device": args.device, "torch": torch.__version__, "args": vars(args), "sweep": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")
    return results


def main(argv=None):
    args = parser.parse_args(argv)
    args.tokens = args.tokens or DEFAULT_TOKENS[args.device]
    args.repeats = args.repeats or (1 if args.device == "cpu" else 10)
    args.variants = args.variants or DEFAULT_VARIANTS[args.device]
    tokens = [int(n) for n in args.tokens.split(",")]
    shapes, variants = args.shapes.split(","), args.variants.split(",")
    for name in set(shapes) - set(SHAPES) | set(variants) - set(VARIANTS):
        parser.error(f"unknown shape or variant {name!r}")
    if args.child:
        print(json.dumps(measure(variants[0], shapes[0], tokens[0], args)))
        return

    if args.sweep:
        return sweep(args, shapes, tokens)
    results = []
    for shape in shapes:
        for N in tokens:
            for variant in variants:
                r = measure_here_or_apart(variant, shape, N, args)
                results.append(r)
                print(f"  {variant} {shape} N={N}: " + (f"{r['ms']:.0f} ms, {r['peak_mb']:.0f} MB"
                                                          if "ms" in r else r["note"]), file=sys.stderr)

    ref = {(r["shape"], r["tokens"]): r for r in results if r["variant"] == "reference" and "ms" in r}
    mem = "peak MB over inputs" + (" (RSS)" if args.device == "cpu" else "")
    print(f"\ndevice {args.device}, torch {torch.__version__}, "
          f"{'fp32' if args.device == 'cpu' else 'bf16 autocast'}, median of {args.repeats} after 1 warm-up")
    print(f"{'variant':<14} {'shape':<13} {'N':>6} {'ms fwd+bwd':>11} {mem:>25} {'abs peak MB':>12} "
          f"{'time vs ref':>11} {'mem vs ref':>10}")
    for r in results:
        head = f"{r['variant']:<14} {r['shape']:<13} {r['tokens']:>6}"
        if "ms" not in r:
            print(f"{head}  {r['note']}")
            continue
        base = ref.get((r["shape"], r["tokens"]))
        tr = f"{r['ms'] / base['ms']:.2f}x" if base else "-"
        mr = f"{r['peak_mb'] / base['peak_mb']:.2f}x" if base and base["peak_mb"] > 0 else "-"
        print(f"{head} {r['ms']:>11.1f} {r['peak_mb']:>25.0f} {r['abs_peak_mb']:>12.0f} {tr:>11} {mr:>10}")
        if base and abs(r["loss"] - base["loss"]) > 2e-2 * abs(base["loss"]):
            print(f"  WARNING: loss {r['loss']:.6g} differs from reference {base['loss']:.6g}")

    out = {"device": args.device, "torch": torch.__version__, "args": vars(args), "results": results}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
