"""A script of this project (train_lm.py, score_severity.py) with every model folder loaded in
float64, for the tests that compare runs split differently (ranks, FSDP shards, micro-batches, a
restart).

Such runs compute the same sums in another order, so in float32 they differ by rounding, and AdamW
amplifies a rounding difference in a gradient near zero (its update is lr * g / (|g| + eps)) into a
weight difference no float32 bound keeps small: 2 gloo ranks against 1 process differed by 1.02e-6
after 6 steps, over a 1e-6 tolerance. In float64 the same rounding is 2**-29 (about 2e-9) times
smaller, so a tolerance can sit orders of magnitude above it and far below any real bug (see
PARALLEL_ATOL). Use with --no-fused-loss: the fused loss accumulates in float32 by design
(models/loss.py), while the reference keeps float64 inputs in float64.

    python tests/float64_run.py SCRIPT.py ARGS...   (what torchrun runs; ARGS as SCRIPT's)
    float64_models(monkeypatch)                      (the same for train_lm.main etc. in this process)
"""
import functools
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# The bound on |run A - run B| for the final weights of such comparisons in float64 (6 AdamW steps,
# lr 3e-3, eps 1e-8, ~300 answer tokens per step). The runs compute the same sums in another order.
# Most weights then differ by a few float64 roundings (u = 2**-53 = 1.1e-16) of their size. The
# exception is a weight whose exact gradient is 0: GPT-2's key bias (softmax ignores a constant added
# to every score of a query). Its computed gradient is rounding noise, at most n u max|term| =
# 300 x 1.1e-16 x 1e-2 = 3.3e-16 (each term is a token's loss gradient / the step's ~300 tokens),
# and AdamW turns it into an update lr g / (|g| + eps) ~ lr g / eps = 3e-3 x 3.3e-16 / 1e-8 = 1e-10
# per step in either run: |A - B| <= 2 x 6 x 1e-10 = 1.2e-9 after 6 steps. PARALLEL_ATOL is 8x that
# (measured: 3e-15 for DDP, FSDP and a restarted run), while a real error (a denominator off by the
# world size, a lost micro-batch, a wrong resume) moves weights by about lr = 3e-3 per step.
# (In float32 the same noise is 2**29 times larger, above eps, and moves that bias by up to lr per
# step: no float32 tolerance holds, and 2 ranks against 1 differed by 1.02e-6 > 1e-6 on a fresh clone.)
PARALLEL_ATOL = 1e-8


def _patch(setattr_):
    import models
    import models.hf_io
    f64 = functools.partial(models.hf_io.load_pretrained, dtype=torch.float64)
    setattr_(models, "load_pretrained", f64)
    setattr_(models.hf_io, "load_pretrained", f64)
    for script in ("train_lm", "score_severity"):  # names bound at their import
        if hasattr(sys.modules.get(script), "load_pretrained"):
            setattr_(sys.modules[script], "load_pretrained", f64)


def float64_models(monkeypatch):
    """train_lm.main in this process loads model folders in float64 until the test ends."""
    _patch(monkeypatch.setattr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _patch(setattr)
    script = str(ROOT / sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
