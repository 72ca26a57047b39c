"""A fixed, recorded evaluation sample: N rows of a split, stratified by severity class.

    from core.sample import stratified_sample
    picked, info = stratified_sample(keys, classes, n=2000, seed=0, min_per_class=300)

MAQA's test split has about 43,000 rows; generating 256 tokens for each of them in 40 runs is
weeks of GPU time. evaluate.py --sample N evaluates the same N rows in every run instead:

  order     inside each stratum (mild, moderate, critical, and rows without a class) the rows are
            ranked by stable_hash(key, seed) (key: the row's id, else its question), so the sample
            is a pure function of the rows and the seed, and does not depend on the file's order
            (a file sorted by specialty gives no specialty more than its share);
  sizes     proportional (default): n_c = N x share_c by largest remainders, so the sample has the
            split's class mix and its plain means estimate the split's;
            --sample-min-per-class K: each class first gets min(K, its rows), the rest of N is
            shared out proportionally to the rows left; critical rows (a few percent of MAQA)
            then get a usable confidence interval;
  weights   with K, the sample's class mix is not the split's: each row of class c weighs
            w_c = share_c(split) / share_c(sample) (mean weight 1), and the overall numbers
            (means, corpus chrF statistics and their bootstrap) use these weights, so they
            estimate the split's overall numbers. Per-class numbers need no weights.

`info` goes into metrics.json as config.sample (rule, counts, weights and the sampled ids), and
--compare / --select refuse runs whose samples differ (same_sample names the flag).
"""
import hashlib

from core.common import SEVERITIES, UsageError, severity_class, stable_hash

STRATA = SEVERITIES + (None,)  # None: rows with neither a severity label nor severity_probs


def allocate(sizes, n, min_per_class=0):
    """{stratum: rows taken} summing to min(n, total): min(min_per_class, size) first, then the rest
    by largest remainders in proportion to the rows each stratum has left (ties: STRATA order)."""
    take = {s: min(min_per_class, size) for s, size in sizes.items()}
    rest = min(n, sum(sizes.values())) - sum(take.values())
    if rest < 0:
        raise UsageError(f"--sample {n} is smaller than --sample-min-per-class {min_per_class} x "
                         f"{sum(1 for v in take.values() if v)} classes")
    left = {s: sizes[s] - take[s] for s in sizes}
    total_left = sum(left.values())
    if rest and total_left:
        quota = {s: rest * left[s] / total_left for s in sizes}
        floor = {s: int(q) for s, q in quota.items()}
        by_remainder = sorted(sizes, key=lambda s: (-(quota[s] - floor[s]), STRATA.index(s)))
        for s in by_remainder[:rest - sum(floor.values())]:
            floor[s] += 1
        for s in sizes:
            take[s] += floor[s]
    return take


def stratified_sample(keys, classes, n, seed, min_per_class=0):
    """Indices (in file order) of the sampled rows and the record of how they were drawn.

    keys: one string per row (its id, else its question); classes: one of SEVERITIES or None each."""
    if n <= 0:
        raise UsageError(f"--sample must be positive, got {n}")
    if min_per_class < 0:
        raise UsageError(f"--sample-min-per-class must be >= 0, got {min_per_class}")
    strata = {s: [i for i, c in enumerate(classes) if c == s] for s in STRATA}
    strata = {s: idx for s, idx in strata.items() if idx}
    sizes = {s: len(idx) for s, idx in strata.items()}
    take = allocate(sizes, n, min_per_class)
    picked = []
    for s, idx in strata.items():
        ranked = sorted(idx, key=lambda i: (stable_hash(keys[i], seed), i))
        picked += ranked[:take[s]]
    picked.sort()
    total, drawn = sum(sizes.values()), len(picked)
    weights = None
    if min_per_class:  # w_c = share in the split / share in the sample
        weights = {name(s): (sizes[s] / total) / (take[s] / drawn) for s in strata if take[s]}
    info = {"n": n, "seed": seed, "min_per_class": min_per_class,
            "rule": ("stratified by severity class, " + (f"at least {min_per_class} per class, the rest proportional; "
                     "overall numbers re-weighted to the split's class shares" if min_per_class else
                     "proportional to the split's class shares") + "; rows ranked by stable_hash(id, seed)"),
            "split_counts": {name(s): sizes[s] for s in strata}, "sample_counts": {name(s): take[s] for s in strata},
            "weights": weights, "ids": [keys[i] for i in picked],
            "ids_sha1": hashlib.sha1("\n".join(keys[i] for i in picked).encode("utf-8")).hexdigest()}
    return picked, info


def name(stratum):
    return stratum if stratum is not None else "unlabeled"


def row_weights(info, classes):
    """Per-row weights for the overall numbers (None when the sample needs none)."""
    if not info or not info.get("weights"):
        return None
    return [info["weights"][name(c)] for c in classes]


def row_key(row):
    """What ranks a row in the sample: its id, else its question."""
    return str(row["id"]) if "id" in row else row["question"]


FLAGS = (("n", "--sample"), ("seed", "--sample-seed"), ("min_per_class", "--sample-min-per-class"))


def same_sample(folders, metas):
    """Raise UsageError naming the flag if the runs were evaluated on different samples."""
    base = metas[0]["config"].get("sample")
    for folder, meta in zip(folders[1:], metas[1:]):
        other = meta["config"].get("sample")
        if base is None and other is None:
            continue
        if (base is None) != (other is None):
            with_it, without = (folders[0], folder) if base is not None else (folder, folders[0])
            raise UsageError(f"runs evaluated on different samples: {with_it} used --sample, {without} did not")
        for key, flag in FLAGS:
            if base.get(key) != other.get(key):
                raise UsageError(f"runs evaluated on different samples: {flag} {base.get(key)} in {folders[0]}, "
                                 f"{other.get(key)} in {folder}")
        if base.get("ids_sha1") != other.get("ids_sha1"):
            raise UsageError(f"runs evaluated on different samples: same --sample flags but other rows "
                             f"(different --data or --split?) in {folders[0]} and {folder}")


def apply_sample(numbered, args, path):
    """evaluate.py's --sample: the sampled [(line, row)] of numbered (file order kept) and config.sample,
    or (numbered, None) without --sample."""
    if args.sample is None:
        return numbered, None
    if args.limit is not None:
        raise UsageError("give --sample or --limit, not both (--limit takes the first rows, --sample a sample)")
    classes = [severity_class(row, path, line) for line, row in numbered]
    picked, info = stratified_sample([row_key(r) for _, r in numbered], classes, args.sample, args.sample_seed,
                                     args.sample_min_per_class)
    return [numbered[i] for i in picked], info
