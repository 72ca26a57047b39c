"""Every GPU measurement of the project in one command: results in files as each part ends.

    python bench/gpu_check.py --out out/gpu_check            # one CUDA GPU: about 11 minutes
    python bench/gpu_check.py --out out/gpu_check --only loss,train   # rerun some parts (the others are kept)
    python bench/gpu_check.py --out out/smoke --smoke        # the same sequence on a CPU, tiny shapes

Parts, in this order (estimates for one H100/H200, torch 2.11; each part has its own time budget):

  part      est.  budget  what it measures
  parity     75 s  120 s  our GPT-2 (AraGPT2-base shape), Qwen2 (Qwen2.5-0.5B), Llama and BERT-base (and
                          every other architecture models/hf_io.py opens that transformers has: Qwen3,
                          Llama-3 RoPE scaling, Gemma-3; not AraGPT2's Grover layout, which transformers
                          lacks: tests/test_aragpt2.py holds it against float64 equations) against
                          transformers, random weights, through save_pretrained +
                          load_pretrained: max |logit diff| in fp32 (TF32 off) and in bf16 autocast, beside
                          transformers' own bf16 error; greedy tokens in fp32 equal, or the first divergence
  loss      140 s  200 s  bench/loss.py's measure(): fused (its element-wise work eager and compiled) vs
                          eager reference vs torch.compile'd reference (+ torch's chunked
                          F.linear_cross_entropy, Liger-Kernel and cut-cross-entropy when importable) at
                          Qwen2.5 (d 896, V 151936) and AraGPT2 (d 768, V 64000) shapes, N 16384 and 4096,
                          5 repeats: fwd+bwd ms and peak memory. Ours first (the issue's target, Qwen2.5 at
                          N 16384, leading), then the chunk-size sweep of both fused variants (512-4096 rows at
                          N 16384) that sets models/loss.py CHUNK_ELEMENTS["cuda"] and shows what train_lm.py
                          --compile's compiled chunks gain on CUDA, then the third-party kernels and the
                          compiled reference (a compile per shape and N); each shape compiles static
  train     180 s  280 s  bench/train.py's step (train_lm.forward_backward + fused AdamW), B 8, T 1024, 2
                          warm-up + 5 timed steps: tokens/s, MFU, peak memory for AraGPT2-base and
                          Qwen2.5-0.5B shapes, ours eager, transformers (usual loss), then ours
                          torch.compile'd as train_lm.py --compile (sequence dimension dynamic), then
                          compiled with static shapes at Qwen2.5 (the cost of the dynamic graph); the slow
                          compiles last, so a timeout loses no baseline
  generate  150 s  300 s  models/generate.py eager and compiled (evaluate.py --compile: static cache,
                          mode="reduce-overhead"; its cold compile in the warm-up call) vs transformers
                          generate (defaults, greedy, static cache off), bf16 weights, batch 1, 8 and 32,
                          64-token prompts, 128 new tokens (EOS off, so equal work): tokens/s
  score      25 s   60 s  bench/score.py: score_severity.py rows/s, BERT-base shape, 10k rows, batch 64/256/512
  syncs      20 s   45 s  one train_lm step after a warm-up step, under torch.cuda.set_sync_debug_mode("warn")
                          around forward+backward, clipping and the optimizer step (not the batch copies):
                          the warnings each phase raises, and the step's one deliberate sync (.tolist());
                          "warn", not "error", so one run finds every sync, not only the first; the
                          targets say whether any sync is left outside the deliberate one
  e2e        75 s  130 s  torchrun --nproc_per_node 1 train_lm.py --compile --force-ddp on the demo data, 20
                          steps, then a resume to 30 (DDP on one rank, nccl): exit codes, loss, tokens/s, MFU,
                          memory, recompiles (TORCH_LOGS)

Total about 11 minutes (generate's compiled variant added ~105 s, not yet measured on a GPU); --time-limit
(default 570 s, under a 10-minute slot) caps the whole run, so with the default the last parts may run
short or be skipped: rerun them with --only.
A part gets its budget, but beyond its estimate no time the later parts' estimates need, so one slow
part cannot starve the rest; a part that would start with less than 10 s left is recorded as
skipped, to be rerun with --only. Inside each part the measurements behind the targets come first.

How it survives. Each part runs in a fresh child process (its own CUDA context, its memory freed
when it ends) under its budget; a timed-out child is killed with its process group (torchrun and
its worker too). The child writes its rows to DIR/parts/<part>.json after every measurement, so a
part killed half-way keeps what it measured; inside a part a failing measurement records its error
and the next one runs. After every part the parent rewrites DIR/gpu_check.json and DIR/gpu_check.md
atomically; its output goes to DIR/logs/<part>.log.

Writes DIR/gpu_check.json:
    {"device": {name, torch, cuda, date, ...}, "summary": {part: status}, "targets": [...],
     "parity": {"status": "ok" | "failed" | "timeout" | "skipped", "seconds", "estimate_s", "budget_s",
                "rows": [{...one measurement...}], "error": ...}, "loss": {...}, ... "e2e": {...}}
and DIR/gpu_check.md: the device, torch version and date, then one table per section, and the issue's
performance targets (met or not) when the real shapes were measured. MFU is against the GPU's bf16
dense peak: PEAK_BF16_FLOPS by its name (H100, H200: 989 TFLOP/s), or --peak-flops; none if unknown.

--smoke: the same sequence on the CPU at tiny shapes (tests/test_gpu_check.py runs it). Differences
from the GPU run, all recorded in the rows: no memory counter (CPU peak RSS instead, meaningless
in one process), no MFU, bench/score.py --tiny, the compiled loss variant skipped, the train part
compiled with the aot_eager backend and the e2e run without --compile (inductor's cold C++ builds take
minutes on a small CPU; tests/test_gpu_paths.py compiles train_lm.py with inductor once), the
sync check marked not applicable (it needs CUDA), and the train rows' loss_tokens and n_layer (which
the smoke test's bound on the first losses' spread counts).
"""
import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch  # noqa: E402

from core.common import DEMO_DATA, atomic_open, write_json  # noqa: E402

PARTS = ("parity", "loss", "train", "generate", "score", "syncs", "e2e")
ESTIMATE_S = {"parity": 75, "loss": 140, "train": 180, "generate": 150, "score": 25, "syncs": 20, "e2e": 75}
BUDGET_S = {"parity": 120, "loss": 200, "train": 280, "generate": 300, "score": 60, "syncs": 45, "e2e": 130}
SMOKE_BUDGET_S = 600  # per part on a small shared CPU (compiles dominate)

# bf16 dense peak FLOP/s for MFU, by a piece of the GPU's name (NVIDIA data sheets; the first match
# counts, so the PCIe and NVL cards come before the SXM ones). Other GPUs: --peak-flops, or no MFU.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200 NVL", 835e12),
                   ("H200", 989e12), ("A100", 312e12))
MIN_PART_S = 10  # a part is not started with less time than this left

# Architectures for the parity part: real shapes on the GPU, tiny ones in --smoke. Those that
# models/hf_io.py does not open (yet) are recorded as skipped, so the list can name them already.
PARITY_GPU = {
    "gpt2 (AraGPT2-base)": dict(model_type="gpt2", vocab_size=64000, n_embd=768, n_layer=12, n_head=12,
                                n_positions=1024),
    "qwen2 (Qwen2.5-0.5B)": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                                 num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                                 rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                 max_position_embeddings=32768),
    "llama (Llama-3.2-1B widths, 4 layers)": dict(model_type="llama", vocab_size=32000, hidden_size=2048,
                                                  num_hidden_layers=4,
                                      num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                                      rope_theta=5e5, tie_word_embeddings=False, max_position_embeddings=8192),
    "llama3 RoPE scaling (Llama-3.2-1B, 4 layers)": dict(model_type="llama", vocab_size=128256, hidden_size=2048,
                                               num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=8,
                                               intermediate_size=8192, rope_theta=5e5, tie_word_embeddings=True,
                                               max_position_embeddings=131072, head_dim=64,
                                               rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                             "original_max_position_embeddings": 8192}),
    "qwen3 (Qwen3-0.6B widths, 8 layers)": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                                                num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                                                head_dim=128, intermediate_size=3072, rope_theta=1e6,
                                                rms_norm_eps=1e-6, tie_word_embeddings=True,
                                                max_position_embeddings=40960),
    "gemma3_text (Gemma-3-1B, 8 layers)": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152,
                                     num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=1,
                                     head_dim=256, intermediate_size=6912, sliding_window=512,
                                     max_position_embeddings=32768, query_pre_attn_scalar=256),
    "bert (BERT-base, AraBERT vocab)": dict(model_type="bert", vocab_size=64000, hidden_size=768,
                                            num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                            max_position_embeddings=512, num_labels=3,
                                            architectures=["BertForSequenceClassification"]),
}
TINY_LM = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=128, initializer_range=0.1)
PARITY_SMOKE = {
    "gpt2 (tiny)": dict(model_type="gpt2", vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=0, eos_token_id=0),
    "qwen2 (tiny)": dict(model_type="qwen2", **TINY_LM, tie_word_embeddings=True),
    "llama (tiny)": dict(model_type="llama", **TINY_LM, tie_word_embeddings=False),
    "llama3 RoPE scaling (tiny)": dict(model_type="llama", **TINY_LM, tie_word_embeddings=True,
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen3 (tiny)": dict(model_type="qwen3", **TINY_LM, head_dim=16, tie_word_embeddings=True),
    "gemma3_text (tiny)": dict(model_type="gemma3_text", **{**TINY_LM, "num_hidden_layers": 3}, head_dim=16,
                               sliding_window=8, query_pre_attn_scalar=16),
    "bert (tiny)": dict(model_type="bert", vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        architectures=["BertForSequenceClassification"]),
}

# Sizes of everything else: GPU_NOTES.md's suggestions (the where they differ), and tiny ones.
SIZES = {
    "gpu": dict(parity=PARITY_GPU, parity_batch=2, parity_seq=1024, parity_prompt=16, parity_new=32,
                loss_shapes=["aragpt2", "qwen2.5-0.5b"], loss_tokens=[4096, 16384], loss_repeats=5,
                loss_no_compile=False, chunk_sweep=[512, 1024, 2048, 4096],
                train_shapes=["qwen2.5-0.5b", "aragpt2-base"], train_static_shapes=["qwen2.5-0.5b"], train_batch=8,
                train_seq=1024, train_warmup=2, train_steps=5, compile_backend="inductor",
                gen_shapes=["qwen2.5-0.5b", "aragpt2-base"], gen_batches=[1, 8, 32], gen_prompt=64, gen_new=128,
                gen_repeats=1, gen_compile=True, score_rows=10000, score_batches="64,256,512", score_extra=[],
                sync_shape="aragpt2-base", sync_batch=8, sync_seq=512,
                e2e_steps=20, e2e_resume_steps=30, e2e_extra=["--compile", "--force-ddp", "--eval-every", "10",
                                                              "--save-every", "10"]),
    "smoke": dict(parity=PARITY_SMOKE, parity_batch=2, parity_seq=24, parity_prompt=6, parity_new=8,
                  loss_shapes=["tiny"], loss_tokens=[256], loss_repeats=1, loss_no_compile=True,
                  chunk_sweep=[32, 64, 128],
                  train_shapes=["tiny"], train_static_shapes=["tiny"], train_batch=2, train_seq=32, train_warmup=1,
                  train_steps=2, compile_backend="aot_eager",
                  gen_shapes=["tiny"], gen_batches=[1, 4], gen_prompt=8, gen_new=8, gen_repeats=1,
                  gen_compile=False,  # the static-cache decoder eager: inductor's cold compile is minutes here
                  score_rows=64, score_batches="32,64", score_extra=["--tiny"],
                  sync_shape="tiny", sync_batch=2, sync_seq=32,
                  # no --compile: inductor's cold C++ builds of train_lm take 5+ minutes on a shared 2-core
                  # CPU; tests/test_gpu_paths.py runs train_lm.py --compile once instead
                  e2e_steps=4, e2e_resume_steps=6, e2e_extra=["--force-ddp", "--eval-every", "2", "--save-every",
                                                              "2", "--eval-batches", "2", "--batch-size", "2",
                                                              "--grad-accum", "2", "--device", "cpu"]),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the module docstring.")
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, parts/ and logs/")
    p.add_argument("--smoke", action="store_true", help="the same sequence on the CPU at tiny shapes")
    p.add_argument("--only", default=None, help=f"comma-separated parts to run (the others keep their results "
                                                f"in DIR/gpu_check.json), from: {','.join(PARTS)}")
    p.add_argument("--skip", default="", help="comma-separated parts not to run")
    p.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run (default 570; "
                                                                  "--smoke: no limit)")
    p.add_argument("--peak-flops", type=float, default=None, help="the GPU's bf16 dense peak FLOP/s for MFU "
                                                                   "(default: by its name, PEAK_BF16_FLOPS)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget (a slow machine)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args(argv)
    for name in (args.only.split(",") if args.only else []) + [s for s in args.skip.split(",") if s]:
        if name not in PARTS:
            p.error(f"--only/--skip: unknown part {name!r} (parts: {', '.join(PARTS)})")
    return args


# -----------------------------------------------------------------------------
# Helpers shared by the parts


class Rows:
    """A part's results, rewritten to its JSON file after every measurement."""

    def __init__(self, path):
        self.path, self.rows, self.notes = Path(path), [], []
        self.save()

    def add(self, row):
        self.rows.append(row)
        self.save()
        print(json.dumps(row, default=str), flush=True)
        return row

    def note(self, text):
        self.notes.append(text)
        self.save()

    def save(self):
        write_json(self.path, {"rows": self.rows, "notes": self.notes})


def setup(smoke):
    """(device, sizes, autocast factory, dtype name) for this run."""
    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    S = SIZES["smoke" if smoke else "gpu"]
    # bf16 autocast on the GPU; also in --smoke (CPU autocast), so the smoke run takes the same paths
    bf16 = not cuda or torch.cuda.is_bf16_supported()
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    return device, S, autocast, "bf16 autocast" if bf16 else "fp32"


def static_shapes():
    """Compile each new shape as its own static graph, as a run with one model and fixed shapes does:
    by default dynamo turns a size that changed between calls into a symbolic one (other kernels)."""
    import torch._dynamo
    torch._dynamo.config.automatic_dynamic_shapes = False  # mark_dynamic (the loss chunk length) still holds


def peak_flops(device_name, override=None):
    """The bf16 dense peak FLOP/s behind MFU: the override (--peak-flops), else PEAK_BF16_FLOPS by the
    device's name, else None (MFU is not reported rather than guessed)."""
    if override:
        return float(override)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in (device_name or "")), None)


def device_peak(device):
    """peak_flops for this process's device (the parent passes --peak-flops in GPU_CHECK_PEAK_FLOPS)."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), os.environ.get("GPU_CHECK_PEAK_FLOPS"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_text(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def first_divergence(a, b):
    """Index of the first differing token of two token lists (per row, flattened), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def hf_copy(ours, cfg):
    """bench/train.py's transformers model of a bench SHAPES config, with our weights (as its main does)."""
    from bench import train as bench_train
    with torch.device(next(ours.parameters()).device):  # built where ours lives (no CPU init at real shapes)
        theirs = bench_train.hf_model(cfg)
    missing, unexpected = theirs.load_state_dict(ours.hf_state_dict(), strict=False)
    if unexpected or not all("lm_head" in k for k in missing):
        raise ValueError(f"weights do not transfer to transformers: missing {missing[:3]}, unexpected {unexpected[:3]}")
    theirs.tie_weights()
    return theirs


def hf_generate(hf, x, n_new):
    """Greedy transformers generate of exactly n_new tokens (EOS off) -> the new tokens [B, n_new]."""
    hf.generation_config.eos_token_id = None  # EOS off: every row makes n_new tokens, as ours with eos_id=None
    hf.generation_config.pad_token_id = 0
    out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                      do_sample=False, num_beams=1)
    return out[:, x.shape[1]:]


# -----------------------------------------------------------------------------
# The parts: each takes (Rows, smoke) and records rows as it goes


def part_parity(rec, smoke):
    import transformers

    from models import build_model, load_pretrained
    from models.generate import generate
    device, S, autocast, _ = setup(smoke)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    torch.backends.cudnn.allow_tf32 = False
    for name, cfg in S["parity"].items():
        row = {"arch": name, "model_type": cfg["model_type"]}
        try:
            with torch.device("meta"):  # does models/ open this config? (shapes only, no memory)
                build_model(cfg)
        except (ValueError, KeyError, TypeError, NotImplementedError) as e:
            rec.add({**row, "note": f"skipped: not supported by models/ ({error_text(e)})"})
            continue
        try:
            rec.add({**row, **parity_one(cfg, S, device, autocast, transformers, load_pretrained, generate)})
        except Exception as e:  # one architecture failing must not hide the others
            rec.add({**row, "error": error_text(e)})
            traceback.print_exc()
        free(device)


def parity_one(cfg, S, device, autocast, transformers, load_pretrained, generate):
    """One architecture: transformers' random model -> save_pretrained -> our load_pretrained -> compare."""
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    hf_cfg = transformers.AutoConfig.for_model(cfg["model_type"], **kw)
    bert = cfg["model_type"] == "bert"
    torch.manual_seed(0)
    with torch.device(device):
        hf = (transformers.BertForSequenceClassification(hf_cfg) if bert else
              transformers.AutoModelForCausalLM.from_config(hf_cfg)).eval()
    V = cfg["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours, _ = load_pretrained(tmp, device=device, tokenizer=False)
    T = min(S["parity_seq"], cfg.get("n_positions") or cfg.get("max_position_embeddings"))  # BERT: 512
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, V, (S["parity_batch"], T), generator=g).to(device)
    row = {"params_m": sum(p.numel() for p in ours.parameters()) / 1e6, "batch": x.shape[0], "seq": x.shape[1]}
    with torch.no_grad():
        hf_logits = lambda: hf(input_ids=x).logits.float()  # noqa: E731
        ref = hf_logits()
        ours32 = ours(x).float()
        with autocast():
            ours16, hf16 = ours(x).float(), hf_logits()
    scale = ref.abs().max().item()
    row.update(max_abs_logit=scale, fp32_max_diff=(ours32 - ref).abs().max().item(),
               bf16_max_diff=(ours16 - ref).abs().max().item(), hf_bf16_max_diff=(hf16 - ref).abs().max().item())
    row["bf16_err_vs_hf_bf16_err"] = row["bf16_max_diff"] / max(row["hf_bf16_max_diff"], 1e-30)
    if not bert:  # greedy tokens in fp32: bf16 argmax ties on random weights are no bugs (GPU_NOTES.md)
        prompts = x[:, :S["parity_prompt"]]
        mine = generate(ours, prompts.tolist(), S["parity_new"], eos_id=None, pad_id=0)
        theirs = hf_generate(hf, prompts, S["parity_new"]).tolist()
        div = [first_divergence(a, b) for a, b in zip(mine, theirs)]
        row.update(new_tokens=S["parity_new"], greedy_same=all(d is None for d in div),
                   first_divergence=min((d for d in div if d is not None), default=None))
    del hf, ours
    return row


def part_loss(rec, smoke):
    from bench import loss as bench_loss
    from models import loss as model_loss
    device, S, _, _ = setup(smoke)
    static_shapes()
    args = bench_loss.parser.parse_args(["--device", device.type, "--repeats", str(S["loss_repeats"])])
    args.no_compile = S["loss_no_compile"]
    if args.no_compile:
        rec.note("--smoke: the torch.compile variant is skipped (inductor builds take minutes on a small CPU)")
    if device.type == "cpu":
        rec.note("CPU: peak_mb is the process's peak RSS so far (one process for every variant): not a "
                 "per-variant figure; run bench/loss.py for those")

    def measure(variant, shape, N):
        try:
            r = bench_loss.measure(variant, shape, N, args)
        except Exception as e:  # measure catches the step's errors; this is for its inputs
            return {"variant": variant, "shape": shape, "tokens": N, "note": f"failed: {error_text(e)}"}
        if variant == "fused_compiled" and "ms" in r:
            r["compile_failed"] = model_loss._compile_failed  # True: these are eager timings
        return r

    combos = [(shape, N) for shape in sorted(S["loss_shapes"], key=lambda s: -bench_loss.SHAPES[s][1])
              for N in sorted(S["loss_tokens"], reverse=True)]  # the target first: Qwen2.5, largest N
    refs = {}

    def variant_row(variant, shape, N):
        r = measure(variant, shape, N)
        if variant == "reference" and "ms" in r:
            refs[shape, N] = r
        ref = refs.get((shape, N))
        if ref is not None and "ms" in r:
            r["time_vs_ref"] = r["ms"] / ref["ms"]
            r["mem_vs_ref"] = r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else None
            r["loss_rel_diff"] = abs(r["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
        rec.add({"kind": "variant", **r})
        free(device)

    # ours first; then the chunk sweep of both fused variants at the largest N (the data behind
    # CHUNK_ELEMENTS; quick once fused_compiled has compiled); then the third-party Triton kernels
    # (a sticky CUDA error there would end this process) and the compiled reference (a compile per row)
    for shape, N in combos:
        for variant in ("reference", "fused", "fused_compiled", "torch_chunked"):
            variant_row(variant, shape, N)
    N = max(S["loss_tokens"])
    for shape in dict.fromkeys(shape for shape, _ in combos):  # Qwen2.5 first
        for chunk in S["chunk_sweep"]:
            args.chunk_size = chunk
            for variant in ("fused", "fused_compiled"):  # the element-wise work eager or compiled
                r = measure(variant, shape, N)
                rec.add({"kind": "chunk sweep", **r, "chunk_size": chunk,
                         "chunk_elements": chunk * bench_loss.SHAPES[shape][1]})
                free(device)
    args.chunk_size = None
    for shape, N in combos:
        for variant in ("cce", "liger", "compiled"):
            variant_row(variant, shape, N)
    from models.loss import CHUNK_ELEMENTS, default_chunk_size
    N, dev = max(S["loss_tokens"]), device.type
    for shape in S["loss_shapes"]:
        V = bench_loss.SHAPES[shape][1]
        budget = CHUNK_ELEMENTS.get(dev, CHUNK_ELEMENTS["cuda"])
        rec.note(f"{shape}: the current default chunk on {dev} is {default_chunk_size(N, V, dev)} rows "
                 f"(CHUNK_ELEMENTS[{dev!r}] = 2**{budget.bit_length() - 1}); fused_compiled = train_lm.py "
                 f"--compile on CUDA")
    rec.save()


def part_train(rec, smoke):
    from bench import train as bench_train

    import train_lm
    from models import build_model
    from models import loss as model_loss
    device, S, autocast, dtype = setup(smoke)
    static_shapes()
    B, T = S["train_batch"], S["train_seq"]
    bargs = SimpleNamespace(warmup=S["train_warmup"], steps=S["train_steps"])
    share = bench_train.demo_prompt_share()  # prompt positions carry no loss, as in training
    rec.note(f"{dtype}; B {B}, T {T}; {S['train_warmup']} warm-up + {S['train_steps']} timed steps; "
             f"compiled with the {S['compile_backend']} backend; {share:.0%} of each row is prompt "
             f"(the demo data's share; the output layer runs on the answer positions only)")
    rec.note("mfu counts the model's FLOPs on every position, the output layer included (PaLM's "
             "definition, one count for every implementation); ours runs the output layer on the answer "
             "positions only, so mfu_executed counts the FLOPs it runs (transformers: the same as mfu)")
    peak = device_peak(device)
    if device.type == "cuda":
        rec.note(f"MFU against {peak / 1e12:.0f} TFLOP/s (bf16 dense peak)" if peak else
                 "no MFU: this GPU's peak is not in PEAK_BF16_FLOPS; rerun with --peak-flops")

    def fresh(shape):  # the same random weights for every implementation: seed 0, drawn on the device
        torch.manual_seed(0)
        with torch.device(device):
            return build_model(bench_train.SHAPES[shape]).train()

    def step_flops(shape):  # (counted as train_lm.py does, executed by ours), from the shapes alone
        with torch.device("meta"):
            m = build_model(bench_train.SHAPES[shape])
        flops = train_lm.step_flops(m, [T] * B)
        return flops, flops - 6 * m.lm_head.weight.numel() * B * round(share * T)  # ours: none on the prompts

    compiled = lambda shape: torch.compile(fresh(shape), backend=S["compile_backend"])  # noqa: E731
    impls = {"ours eager": fresh, "transformers": lambda shape: hf_copy(fresh(shape), bench_train.SHAPES[shape]),
             "ours compiled": compiled, "ours compiled static T": compiled}
    rows = {}
    # every shape's eager and transformers rows before any compiled one: compiling is the slow part,
    # so a timeout loses a compiled row, never the baselines of the targets. "ours compiled" runs as
    # train_lm.py --compile does (sequence dimension dynamic; on CUDA the loss chunks compiled too);
    # "static T" bakes this batch's shape in (what padding to one length would run): their ratio is
    # what the dynamic graph costs
    for impl, make in impls.items():
        for shape in S["train_static_shapes"] if impl == "ours compiled static T" else S["train_shapes"]:
            cfg = bench_train.SHAPES[shape]
            row, model = {"shape": shape, "impl": impl, "batch": B, "seq": T}, None
            try:
                flops, executed = step_flops(shape)
                executed = flops if impl == "transformers" else executed
                if impl.startswith("ours compiled"):
                    torch._dynamo.reset()  # a fresh cache: the other compiled row's graphs would pass its guards
                model = make(shape)
                mb = bench_train.make_batch(B, T, cfg["vocab_size"], device, share)
                if impl == "ours compiled":
                    mb = bench_train.dynamic_seq(mb)
                free(device)
                fn = {"ours eager": bench_train.ours_step, "transformers": bench_train.hf_step}.get(impl) or \
                    bench_train.compiled_step(device)
                r = bench_train.measure(fn, model, mb, bargs, device, autocast)
                if impl.startswith("ours compiled") and device.type == "cuda":
                    row["chunk_compile_failed"] = model_loss._compile_failed  # True: the loss chunks ran eagerly
                sec = r["step_ms"] / 1000
                row.update(tokens_per_s=B * T / sec, step_ms=r["step_ms"], peak_mem_gb=r["peak_mem_gb"],
                           mfu=flops / sec / peak if peak else None,
                           mfu_executed=executed / sec / peak if peak else None,
                           first_loss=r["first_loss"])
                if smoke:  # what tests/test_gpu_check.py's bound on the first losses' spread counts
                    row.update(loss_tokens=mb["n_tokens"], n_layer=cfg["n_layer"])
            except Exception as e:
                row["error"] = error_text(e)
                traceback.print_exc()
            del model  # its memory goes back before the next model is built
            rows[shape, impl] = rec.add(row)
            free(device)
            for mine in ("ours eager", "ours compiled", "ours compiled static T"):  # ratios, once both are measured
                r, hf_row = rows.get((shape, mine), {}), rows.get((shape, "transformers"), {})
                if "tokens_per_s" in r and "tokens_per_s" in hf_row:
                    r["speed_vs_transformers"] = r["tokens_per_s"] / hf_row["tokens_per_s"]
                    if r["peak_mem_gb"] and hf_row["peak_mem_gb"]:
                        r["mem_vs_transformers"] = r["peak_mem_gb"] / hf_row["peak_mem_gb"]
            dyn, static = rows.get((shape, "ours compiled"), {}), rows.get((shape, "ours compiled static T"), {})
            if "tokens_per_s" in dyn and "tokens_per_s" in static:
                static["dynamic_vs_static"] = dyn["tokens_per_s"] / static["tokens_per_s"]
            rec.save()


def part_generate(rec, smoke):
    from bench import train as bench_train

    from models import build_model
    from models.generate import Decoder, generate
    device, S, _, _ = setup(smoke)
    dtype = torch.bfloat16  # bf16 weights, as a user generates on a GPU (and the CPU smoke takes the same path)
    for shape in S["gen_shapes"]:
        cfg = bench_train.SHAPES[shape]
        torch.manual_seed(0)
        with torch.device(device):
            ours = build_model(cfg).eval()
        theirs = hf_copy(ours, cfg).eval()
        ours.to(device, dtype)
        theirs.to(device, dtype)
        for B in S["gen_batches"]:
            g = torch.Generator().manual_seed(B)
            x = torch.randint(1, cfg["vocab_size"], (B, S["gen_prompt"]), generator=g).to(device)
            row = {"shape": shape, "dtype": str(dtype).replace("torch.", ""), "batch": B, "prompt": S["gen_prompt"],
                   "new_tokens": S["gen_new"]}
            dec = Decoder(ours, S["gen_prompt"] + S["gen_new"] - 1, compile=S["gen_compile"])  # evaluate --compile
            runs = {"ours": lambda: generate(ours, x.tolist(), S["gen_new"], eos_id=None, pad_id=0),
                    "ours_compiled": lambda: generate(ours, x.tolist(), S["gen_new"], eos_id=None, pad_id=0,
                                                      decoder=dec),
                    "transformers": lambda: hf_generate(theirs, x, S["gen_new"]).tolist()}
            row["compiled"] = S["gen_compile"]
            try:
                outs = {}
                for impl, fn in runs.items():
                    times = []
                    for _ in range(S["gen_repeats"] + 1):  # the first call warms up
                        sync(device)
                        t0 = time.perf_counter()
                        outs[impl] = fn()
                        sync(device)
                        times.append(time.perf_counter() - t0)
                    row[f"{impl}_tok_s"] = B * S["gen_new"] / min(times[1:])
                row["ours_vs_transformers"] = row["ours_tok_s"] / row["transformers_tok_s"]
                row["compiled_vs_transformers"] = row["ours_compiled_tok_s"] / row["transformers_tok_s"]
                row["compiled_vs_eager"] = row["ours_compiled_tok_s"] / row["ours_tok_s"]
                row["compiled_same_tokens"] = outs["ours_compiled"] == outs["ours"]
                div = [first_divergence(a, b) for a, b in zip(outs["ours"], outs["transformers"])]
                row["same_tokens_rows"] = sum(d is None for d in div) / B  # bf16 ties may differ: parity checks fp32
            except Exception as e:
                row["error"] = error_text(e)
                traceback.print_exc()
            rec.add(row)
        del ours, theirs
        free(device)


def part_score(rec, smoke):
    from bench import score as bench_score
    device, S, _, _ = setup(smoke)
    rec.note("rows/s as score_severity.py reports it: tokenizing and scoring, the clock started after loading")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "score.json"
        bench_score.main(["--rows", str(S["score_rows"]), "--batch-size", S["score_batches"],
                          "--device", device.type, "--out", str(out), *S["score_extra"]])
        info = json.loads(out.read_text())
    for r in info["results"]:
        rec.add({"params_m": info["params"] / 1e6, "mean_tokens_per_row": info["mean_tokens_per_row"], **r})


def part_syncs(rec, smoke):
    from bench import train as bench_train

    import train_lm
    from models import build_model
    from models.loss import fused_linear_cross_entropy
    device, S, autocast, _ = setup(smoke)
    cfg = bench_train.SHAPES[S["sync_shape"]]
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg).train()
    # the train_lm.py step: two micro-batches (accumulation), fused loss, clip, fused AdamW
    from core.common import adamw
    opt = adamw(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
    share = bench_train.demo_prompt_share()
    mbs = [bench_train.make_batch(S["sync_batch"], S["sync_seq"], cfg["vocab_size"], device, share, seed=k)
           for k in range(2)]
    denom = float(sum(mb["n_tokens"] for mb in mbs))  # on the host, as train_lm.step_denominator: no copy
    cuda = device.type == "cuda"
    phases = {
        "forward+backward": lambda st: st.update(sums=train_lm.forward_backward(
            model, model.lm_head.weight, mbs, denom, 1, fused_linear_cross_entropy, autocast)),
        "forward+backward, compiled loss chunks (--compile)": lambda st: st.update(sums=train_lm.forward_backward(
            model, model.lm_head.weight, mbs, denom, 1, functools.partial(fused_linear_cross_entropy, compiled=cuda),
            autocast)),
        "clip_grad_norm_": lambda st: st.update(gnorm=torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)),
        "optimizer step": lambda st: (opt.step(), opt.zero_grad(set_to_none=True)),
        # the one deliberate host sync of train_lm's step: losses, denominator and grad norm together
        "stats .tolist() (deliberate)": lambda st: st.update(stats=torch.cat(
            [st["sums"], st["gnorm"].float().view(1)]).tolist()),
    }
    st = {}
    for fn in phases.values():  # warm-up step: allocations, fused-AdamW state, autotuning
        fn(st)
    sync(device)
    if not cuda:
        rec.note("not applicable on CPU: torch.cuda.set_sync_debug_mode needs CUDA; the step ran unchecked")
    for phase, fn in phases.items():
        row = {"phase": phase}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                fn(st)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
        row.update(applicable=cuda, sync_warnings=len(syncs) if cuda else None, where=", ".join(where[:8]) or None)
        rec.add(row)
    loss = sum(st["stats"][:-1]) / denom  # the micro-batches' weighted sums over the host denominator
    rec.add({"phase": "step result", "loss": loss, "grad_norm": st["stats"][-1], "applicable": cuda})
    rec.note("the plain model (no DDP): the e2e part runs the DDP path")


def part_e2e(rec, smoke, out_dir, deadline):
    device, S, _, _ = setup(smoke)
    peak = device_peak(device)
    run = Path(out_dir) / "e2e_run"
    if run.exists():
        shutil.rmtree(run)  # our own run folder from an earlier check: start fresh
    env = {**os.environ, "TORCH_LOGS": "recompiles", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if smoke:
        env["OMP_NUM_THREADS"] = "1"
    for label, steps in (("fresh", S["e2e_steps"]), ("resume", S["e2e_resume_steps"])):
        # one command run twice, as a user reruns a killed job: the first run dies once at e2e_steps, right
        # after its checkpoint (train_lm's --crash-at-step), the second resumes there (a finished run is
        # never extended: train_lm refuses another --max-steps on a resume)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(ROOT / "train_lm.py"), "--data", str(DEMO_DATA), "--weights", "balanced",
               "--out", str(run), "--max-steps", str(S["e2e_resume_steps"]),
               "--crash-at-step", str(S["e2e_steps"]), *S["e2e_extra"]]
        if peak:  # train_lm's MFU against the same peak as the train part's
            cmd += ["--peak-flops", str(peak)]
        log = Path(out_dir) / "logs" / f"e2e_{label}.log"
        t0 = time.time()
        status, err, _ = run_child(cmd, log, deadline - time.time() - 5, env)  # torchrun and its worker
        text = log.read_text(errors="replace")
        if label == "fresh" and status == "failed" and f"simulated crash at step {steps}" in text:
            status, err = "ok", None  # the planned stop
        records = []
        for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                pass
        steps_logged = [r for r in records if "loss" in r and "step" in r]
        first = 0 if label == "fresh" else S["e2e_steps"]
        mine = [r for r in steps_logged if r["step"] > first]
        later = mine[2:] or mine  # the first steps compile

        def med(key):  # the median over the steps after compiling
            vals = sorted(r[key] for r in later if r.get(key) is not None)
            return vals[len(vals) // 2] if vals else None

        vals = [r for r in records if "val_loss" in r]
        resumed = [r["resumed_at"] for r in records if "resumed_at" in r]
        try:  # "ddp": --force-ddp wraps DDP with one rank
            parallel = json.loads((run / "last" / "meta.json").read_text())["parallel"]
        except (OSError, ValueError, KeyError):
            parallel = None
        rec.add({"run": f"{label} {first}->{steps}", "compile": "--compile" in cmd, "parallel": parallel,
                 "status": status,
                 "wall_s": time.time() - t0,
                 "last_step": mine[-1]["step"] if mine else None, "loss": mine[-1]["loss"] if mine else None,
                 "val_loss": vals[-1]["val_loss"] if vals else None, "tokens_per_s_median": med("tokens_per_s"),
                 "mfu_median": med("mfu") if peak else None,  # (unknown GPU: train_lm's default peak is an H100's)
                 "peak_mem_gb": max((r["peak_mem_gb"] for r in mine), default=None),
                 "recompiles": len(re.findall(r"Recompiling function", text)),
                 "resumed_at": resumed[-1] if resumed and label == "resume" else None,
                 "log": str(log.relative_to(out_dir))})
        if status != "ok":
            raise RuntimeError(f"train_lm.py {label} run {status}: {err} (see {log})")
    rec.note(f"torchrun --nproc_per_node 1 --force-ddp: train_lm.py's DDP path on one rank (parallel = ddp: "
             f"DDP's bucket all-reduce over {'gloo' if smoke else 'nccl'}, no_sync across the 2 micro-batches "
             f"of a step), "
             f"with nothing to overlap; recompiles = 'Recompiling function' lines of TORCH_LOGS=recompiles")


def run_part(args):
    """Child process: run one part, its rows saved to DIR/parts/<part>.json as they come."""
    out = Path(args.out)
    rec = Rows(out / "parts" / f"{args.part}.json")
    fn = globals()[f"part_{args.part}"]
    if args.part == "e2e":
        fn(rec, args.smoke, out, float(os.environ.get("GPU_CHECK_DEADLINE", time.time() + 3600)))
    else:
        fn(rec, args.smoke)


# -----------------------------------------------------------------------------
# The parent: device facts, one child per part, the JSON and Markdown after every part


def device_info(smoke, peak=None):
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "smoke (CPU, tiny shapes)" if smoke else "full", "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    if torch.cuda.is_available() and not smoke:
        prop = torch.cuda.get_device_properties(0)
        info.update(name=prop.name, cuda=torch.version.cuda, capability=f"{prop.major}.{prop.minor}",
                    memory_gb=prop.total_memory / 2**30, bf16=torch.cuda.is_bf16_supported(),
                    device_count=torch.cuda.device_count(), peak_bf16_flops=peak_flops(prop.name, peak))
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()})", cuda=None, bf16=None,
                    threads=torch.get_num_threads())
    for pkg in ("transformers", "triton", "liger_kernel", "cut_cross_entropy"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "installed")
        except Exception:  # not installed, or broken: either way not usable here
            info[pkg] = None
    return info


def run_child(cmd, log, budget, env=None):
    """Run cmd in a fresh process under `budget` seconds, output to log; (status, error or None, seconds)."""
    t0 = time.time()
    with open(log, "w") as f:
        # own session: on a timeout the whole group goes (a torchrun and its worker too), nothing else
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = p.wait(timeout=max(budget, 0.1))
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(p.pid, signal.SIGKILL)  # on a timeout, or whatever the child left running
        except ProcessLookupError:
            pass
        p.wait()
    if code is None:
        return "timeout", f"killed after its budget of {budget:.0f} s", time.time() - t0
    if code == 0:
        return "ok", None, time.time() - t0
    lines = [s for s in Path(log).read_text(errors="replace").splitlines() if s.strip()]
    err = next((s for s in reversed(lines) if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", s)), None)
    return "failed", (err or (lines[-1] if lines else f"exit code {code}"))[:300], time.time() - t0


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v).replace("|", "/").replace("\n", " ")


def md_table(rows):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def targets(results):
    """The issue's performance targets, from the rows of the real shapes (none in --smoke)."""
    rows = {p: results.get(p, {}).get("rows", []) for p in PARTS}
    out = []

    def train_row(shape, impl):
        return next((r for r in rows["train"] if r.get("shape") == shape and r.get("impl") == impl
                     and r.get("mfu") is not None), None)

    for shape, mfu in (("qwen2.5-0.5b", 0.5), ("aragpt2-base", 0.4)):
        for impl in ("ours eager", "ours compiled"):
            r = train_row(shape, impl)
            if r:
                out.append({"target": f"train {shape} {impl}: MFU >= {mfu:.0%}", "measured": r["mfu"],
                            "met": r["mfu"] >= mfu})
                if shape == "qwen2.5-0.5b" and "speed_vs_transformers" in r:
                    out.append({"target": f"train {shape} {impl}: >= 1.3x transformers tokens/s",
                                "measured": r["speed_vs_transformers"], "met": r["speed_vs_transformers"] >= 1.3})
                    out.append({"target": f"train {shape} {impl}: peak memory below transformers'",
                                "measured": r.get("mem_vs_transformers"),
                                "met": (r.get("mem_vs_transformers") or 9) < 1})
    loss = {(r.get("variant"), r.get("shape"), r.get("tokens")): r for r in rows["loss"] if r.get("kind") == "variant"}
    f, ref, cce = (loss.get((v, "qwen2.5-0.5b", 16384), {}) for v in ("fused", "reference", "cce"))
    if "ms" in f and "ms" in ref:
        out.append({"target": "loss qwen2.5 N 16384: fused no slower than eager reference",
                    "measured": f["ms"] / ref["ms"], "met": f["ms"] <= ref["ms"]})
        out.append({"target": "loss qwen2.5 N 16384: fused >= 10x less peak memory than reference",
                    "measured": ref["peak_mb"] / max(f["peak_mb"], 1e-9), "met": ref["peak_mb"] >= 10 * f["peak_mb"]})
    if "ms" in f and "ms" in cce:
        out.append({"target": "loss qwen2.5 N 16384: fused within 1.5x of cut-cross-entropy's time",
                    "measured": f["ms"] / cce["ms"], "met": f["ms"] <= 1.5 * cce["ms"]})
    checked = [r for r in rows["syncs"] if r.get("applicable") and r.get("sync_warnings") is not None]
    # CUDA only, and only when every phase ran: the "raises nothing except at the one deliberate host sync"
    if checked and results["syncs"].get("status") == "ok":
        stray = sum(r["sync_warnings"] for r in checked if "deliberate" not in r["phase"])
        out.append({"target": "syncs: no host sync in a training step but its deliberate .tolist()",
                    "measured": stray, "met": stray == 0})
    for r in rows["generate"]:
        if "ours_vs_transformers" in r and r.get("shape") != "tiny":
            out.append({"target": f"generate {r['shape']} batch {r['batch']}: >= transformers tokens/s",
                        "measured": r["ours_vs_transformers"], "met": r["ours_vs_transformers"] >= 1})
        if r.get("compiled") and "compiled_vs_transformers" in r and r.get("batch") == 32:
            out.append({"target": f"generate {r['shape']} batch 32: ours compiled >= 2x transformers tokens/s",
                        "measured": r["compiled_vs_transformers"], "met": r["compiled_vs_transformers"] >= 2})
    return out


def write_report(out, results):
    results["summary"] = {p: results[p]["status"] for p in PARTS if p in results}
    results["targets"] = targets(results)
    write_json(out / "gpu_check.json", results)
    dev = results["device"]
    md = [f"# GPU check: {dev.get('name')}", "",
          f"{dev['date']}; torch {dev['torch']}" + (f", CUDA {dev['cuda']}" if dev.get("cuda") else "") +
          f"; transformers {dev.get('transformers')}; mode {dev['mode']}; commit {dev.get('commit')}; "
          f"`{dev['command']}`", "", "## device", "", md_table([dev]), "", "## summary", "",
          md_table([{"part": p, **{k: results[p].get(k) for k in ("status", "seconds", "estimate_s", "budget_s",
                                                                    "error")}} for p in PARTS if p in results])]
    if results["targets"]:
        md += ["", "## targets", "", md_table(results["targets"])]
    for p in PARTS:
        if p not in results:
            continue
        sec = results[p]
        md += ["", f"## {p}", ""]
        if sec.get("error"):
            md += [f"**{sec['status']}**: {sec['error']}", ""]
        md += [md_table(sec["rows"]) if sec.get("rows") else "(no rows)"]
        md += [""] + [f"- {n}" for n in sec.get("notes", [])]
    with atomic_open(out / "gpu_check.md") as f:
        f.write("\n".join(md).rstrip() + "\n")


def part_budget(part, later, left, smoke=False, scale=1.0):
    """Seconds for `part` with `left` seconds to go and the parts `later` still to run: its budget,
    but beyond its own estimate none of the time the later parts' estimates need (--smoke: no
    estimates, each part its budget)."""
    if smoke:
        return min(SMOKE_BUDGET_S * scale, left)
    reserved = sum(ESTIMATE_S[q] for q in later) * scale
    return min(BUDGET_S[part] * scale, left, max(left - reserved, ESTIMATE_S[part] * scale))


def main(argv=None):
    args = get_args(argv)
    if args.part:
        return run_part(args)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: measuring on the CPU at the full shapes would take hours; use --smoke", file=sys.stderr)
        sys.exit(1)
    limit = args.time_limit if args.time_limit is not None else (math.inf if args.smoke else 570.0)
    deadline = time.time() + limit
    selected = [p for p in PARTS if (not args.only or p in args.only.split(",")) and p not in args.skip.split(",")]
    results = {}
    if args.only and (out / "gpu_check.json").is_file():  # a rerun of some parts keeps the others' results
        try:
            results = json.loads((out / "gpu_check.json").read_text())
        except json.JSONDecodeError:
            results = {}
    results["device"] = device_info(args.smoke, args.peak_flops)
    write_report(out, results)
    for i, part in enumerate(selected):
        budget = part_budget(part, selected[i + 1:], deadline - time.time(), args.smoke, args.budget_scale)
        sec = {"status": "skipped", "estimate_s": None if args.smoke else ESTIMATE_S[part], "budget_s": budget,
               "rows": [], "notes": []}
        if budget < MIN_PART_S:
            sec["error"] = f"no time left in --time-limit {limit:.0f} s: rerun with --only {part}"
        else:
            print(f"[gpu_check] {part}: budget {budget:.0f} s ...", flush=True)
            (out / "parts" / f"{part}.json").unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--part", part]
            env = {**os.environ, "GPU_CHECK_DEADLINE": str(time.time() + budget)}  # e2e sizes its runs by it
            if args.peak_flops:
                env["GPU_CHECK_PEAK_FLOPS"] = str(args.peak_flops)
            status, err, seconds = run_child(cmd + (["--smoke"] if args.smoke else []), out / "logs" / f"{part}.log",
                                             budget, env)
            sec.update(status=status, seconds=seconds)
            if err:
                sec["error"] = err
            try:
                sec.update(json.loads((out / "parts" / f"{part}.json").read_text()))
            except (OSError, json.JSONDecodeError):
                pass  # the child died before its first write: the error says why
            print(f"[gpu_check] {part}: {status} in {seconds:.0f} s" + (f" ({err})" if err else ""), flush=True)
        results[part] = sec
        write_report(out, results)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    failed = [p for p in selected if results[p]["status"] != "ok"]
    if failed:
        print(f"not ok: {', '.join(failed)} (logs in {out / 'logs'}; rerun with --only {','.join(failed)})")
    return results


if __name__ == "__main__":
    main()
