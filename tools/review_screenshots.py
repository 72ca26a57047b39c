"""Screenshots of review.py's two pages by headless chromium (`make screenshots`):
docs/img/review-label.png and docs/img/review-compare.png, from the shipped demo data.

The compare page needs two evaluate.py runs; for a picture, two stand-in runs are written from
data/demo.jsonl (run A answers with the doctor's answer, run B with its first half). Needs
selenium, chromium and chromium-driver (tools/browser.py says how to install them)."""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import review  # noqa: E402
from tools import browser  # noqa: E402


def main():
    why = browser.missing()
    if why:
        raise SystemExit(f"error: {why}")
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        review.main(["label", "--data", str(ROOT / "data" / "demo.jsonl"), "--n", "20", "--out", str(tmp / "label")])
        rows = [json.loads(x) for x in (ROOT / "data" / "demo.jsonl").read_text(encoding="utf-8").splitlines()]
        for name, answer in (("A", lambda a: a), ("B", lambda a: " ".join(a.split()[: len(a.split()) // 2]))):
            (tmp / name).mkdir()
            (tmp / name / "generations.jsonl").write_text(
                "".join(json.dumps({**r, "generated": answer(r["answer"])}, ensure_ascii=False) + "\n" for r in rows),
                encoding="utf-8")
        review.main(["compare", "--runs", str(tmp / "A"), str(tmp / "B"), "--n", "20", "--out", str(tmp / "compare")])
        driver = browser.start(tmp / "downloads", tmp / "profile", width=1200, height=1000)
        try:
            for kind, pick in (("label", "[data-label=critical]"), ("compare", "[data-choice=first]")):
                driver.get((tmp / kind / f"{kind}.html").as_uri())
                driver.find_element("css selector", "#annotator").send_keys("Dr Amal\n")
                driver.find_element("css selector", pick).click()
                if kind == "label":
                    driver.find_element("css selector", "[data-confidence=sure]").click()
                driver.save_screenshot(str(out / f"review-{kind}.png"))
                print(f"wrote {out / f'review-{kind}.png'}")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
