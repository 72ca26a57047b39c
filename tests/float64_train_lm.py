"""train_lm.py with every model folder loaded in float64, for the tests that compare runs split
differently (ranks, FSDP shards, micro-batches, a restart).

Such runs compute the same sums in another order, so in float32 they differ by rounding, and AdamW
amplifies a rounding difference in a gradient near zero (its update is lr * g / (|g| + eps)) into a
weight difference no float32 bound keeps small: 2 gloo ranks against 1 process differed by 1.02e-6
after 6 steps, over a 1e-6 tolerance. In float64 the same rounding is 2**-29 (about 2e-9) times
smaller, so a tolerance can sit many orders of magnitude above it and far below any real bug (see
PARALLEL_ATOL). Use with --no-fused-loss: the fused loss accumulates in float32 by design
(models/loss.py), while the reference keeps float64 inputs in float64.

    python tests/float64_train_lm.py ARGS...        (what torchrun runs; ARGS as train_lm.py's)
    float64_models(monkeypatch)                      (the same for train_lm.main in this process)
"""
import functools
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# The bound on |run A - run B| for final weights of parallel-vs-single comparisons in float64.
# The runs differ only in the order of float64 sums (unit roundoff u = 2**-53 = 1.1e-16). In float32
# (u = 6e-8) the same comparisons differed by at most 1.02e-6 after 6 AdamW steps, i.e. the
# rounding is amplified about 17 u; at float64 that is 2e-15. 1e-11 leaves a factor 5000 over it,
# while a real error (a denominator off by the world size, a lost micro-batch, a wrong resume)
# changes a weight by about the learning rate, 3e-3 per step.
PARALLEL_ATOL = 1e-11


def _patch(setattr_):
    import models
    import models.hf_io
    f64 = functools.partial(models.hf_io.load_pretrained, dtype=torch.float64)
    setattr_(models, "load_pretrained", f64)
    setattr_(models.hf_io, "load_pretrained", f64)
    if "train_lm" in sys.modules:
        setattr_(sys.modules["train_lm"], "load_pretrained", f64)


def float64_models(monkeypatch):
    """train_lm.main in this process loads model folders in float64 until the test ends."""
    _patch(monkeypatch.setattr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _patch(setattr)
    sys.argv = [str(ROOT / "train_lm.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "train_lm.py"), run_name="__main__")
