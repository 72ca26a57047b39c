"""Severity curriculum (the group's companion method, arXiv 2604.06365): fine-tune in stages,
mild first, then moderate, then critical.

    --curriculum disjoint     stage k trains only on the training rows of class k
    --curriculum cumulative   stage k trains on the rows of classes 0..k (the last stage: all rows)

A row's class is its severity label, else the argmax of its severity_probs (common.severity_class,
as everywhere else). The --max-steps budget is split between the stages in proportion to their
rows (disjoint: the class's rows; cumulative: the rows seen in that stage), rounded by largest
remainder (ties go to the earlier stage), so the steps add up to --max-steps exactly. A class
without training rows has no stage. The learning-rate schedule stays one warmup + cosine over the
whole run (not restarted per stage), and --weights applies inside every stage exactly as without a
curriculum, so the two combine freely. Within a stage the micro-batches are train_lm.make_batches
over the stage's rows, epoch after epoch from the stage's first step; a stage is named by the class
it adds ("mild", "moderate", "critical"), and that name goes into every step line of metrics.jsonl.

This is data, not a second loop: the training loop asks stage_at(stages, step) which rows to
batch, and its data position (epoch, data_pos) restarts at 0 when the stage changes, so a resume
in the middle of a stage continues exactly where it stopped.
"""
import hashlib

import numpy as np

from core.common import SEVERITIES, UsageError

CURRICULA = ("disjoint", "cumulative")


def curriculum_stages(classes, mode, max_steps):
    """The stages of a curriculum: a list of dicts in training order, each with
    name (the class the stage adds), rows (int64 indices into the training rows), first_step and
    steps (the stage trains steps first_step .. first_step + steps - 1).

    classes: each training row's class index into SEVERITIES (len(SEVERITIES) = no severity).
    """
    if mode not in CURRICULA:
        raise UsageError(f"--curriculum {mode!r}: expected one of {', '.join(CURRICULA)}")
    classes = np.asarray(classes)
    if (classes >= len(SEVERITIES)).any():
        raise UsageError(f"--curriculum: {int((classes >= len(SEVERITIES)).sum())} training rows have neither "
                         f"severity nor severity_probs, so they belong to no stage")
    present = [k for k in range(len(SEVERITIES)) if (classes == k).any()]
    members = [np.flatnonzero(classes == k if mode == "disjoint" else classes <= k) for k in present]
    sizes = [len(m) for m in members]
    total = sum(sizes)
    # the budget in proportion to the stage's rows, max_steps * size / total, in integers (Python's,
    # unbounded): the floor and the remainder of the division, so equal fractions compare equal
    steps = [max_steps * n // total for n in sizes]
    remainders = [max_steps * n % total for n in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda j: -remainders[j])  # stable: ties go to the earlier stage
    for j in by_remainder[:max_steps - sum(steps)]:
        steps[j] += 1  # largest remainder
    stages, first = [], 0
    for k, rows, n in zip(present, members, steps):
        if n > 0:  # a stage too small for one step of the budget is skipped (only with tiny --max-steps)
            stages.append({"name": SEVERITIES[k], "rows": rows, "first_step": first, "steps": int(n)})
        first += int(n)
    return stages


def stage_at(stages, step):
    """The stage that trains optimizer step `step` (0-based); the last stage from max_steps on."""
    for stage in stages:
        if step < stage["first_step"] + stage["steps"]:
            return stage
    return stages[-1]


def describe(stages, mode):
    """The plan as plain JSON for meta.json (row counts and a hash of the members, so a resume
    with other stage memberships is refused)."""
    return {"mode": mode, "stages": [
        {"name": s["name"], "rows": len(s["rows"]), "first_step": s["first_step"], "steps": s["steps"],
         "rows_sha1": hashlib.sha1(np.asarray(s["rows"], dtype=np.int64).tobytes()).hexdigest()} for s in stages]}
