"""A simulated clinician for trying review.py's workflow without people: writes the file a
labelling page's "export" button would download, as if an annotator had labelled every item.

The simulated annotator gives an item its reference label (the row's `severity` in the page's
items.jsonl, i.e. the rules on the demo data) with probability --accuracy, otherwise a different
class chosen at random, and "cannot tell" with probability --cannot-tell. Seeded. Synthetic:
numbers from it show the machinery works, not how well rules or classifiers agree with clinicians.

    python tools/simulate_annotator.py --page out/review/label --annotator A --accuracy 0.85 --seed 1 \
        --out out/review/labels-A.json
"""
import argparse
import datetime
import json
import random
from pathlib import Path

SEVERITIES = ("mild", "moderate", "critical")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", required=True, help="the folder review.py label wrote")
    p.add_argument("--annotator", required=True, help="the simulated annotator's name")
    p.add_argument("--accuracy", type=float, default=0.85, help="probability of giving the reference label")
    p.add_argument("--cannot-tell", type=float, default=0.03, help="probability of answering 'cannot tell'")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="the export file to write (refuses to overwrite)")
    args = p.parse_args(argv)
    page = json.loads((Path(args.page) / "page.json").read_text(encoding="utf-8"))
    items = [json.loads(x) for x in (Path(args.page) / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(args.seed)
    records = []
    for row in items:
        u = rng.random()
        if u < args.cannot_tell:
            label = "cannot_tell"
        elif u < args.cannot_tell + (1 - args.cannot_tell) * args.accuracy:
            label = row["severity"]
        else:
            label = rng.choice([s for s in SEVERITIES if s != row["severity"]])
        records.append({"id": str(row["id"]), "label": label, "confidence": "sure", "note": ""})
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists: it will not be overwritten")
    stamp = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"page_id": page["page_id"], "kind": "label", "annotator": args.annotator,
                               "timestamp": stamp.isoformat(), "records": records}, ensure_ascii=False, indent=1),
                   encoding="utf-8")
    print(f"wrote {out}: {len(records)} labels by {args.annotator}")


if __name__ == "__main__":
    main()
