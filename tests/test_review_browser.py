"""review.py's pages in a real browser (Debian's chromium + selenium), used as a clinician would:
open from file://, name, keys and clicks, reload (the work is still there), export, and the
downloaded file read back by review.py results. One browser for the whole module.
Without chromium / chromedriver / selenium these tests skip, saying how to install them."""
import json
import time

import pytest

import review
from conftest import write_rows
from core import review as rv
from tools import browser

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    d = browser.start(downloads, tmp_path_factory.mktemp("profile"))
    d.downloads = downloads
    yield d
    d.quit()


def keys(driver, *ks):
    from selenium.webdriver.common.action_chains import ActionChains
    chain = ActionChains(driver)
    for k in ks:
        chain.send_keys(k)
    chain.perform()


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def begin(driver, html, name):
    from selenium.webdriver.common.keys import Keys
    driver.get(html.as_uri())
    assert css(driver, "#name-box").is_displayed() and not css(driver, "#main").is_displayed()
    css(driver, "#annotator").send_keys(name + Keys.ENTER)
    assert css(driver, "#main").is_displayed()
    assert css(driver, "#who").text == name


def progress(driver):
    return css(driver, "#progress").text


@pytest.fixture(scope="module")
def label_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("label") / "page"
    review.main(["label", "--data", "data/demo.jsonl", "--n", "6", "--seed", "3", "--out", str(out)])
    return out


def test_label_page_keys_clicks_reload_export(driver, label_page):
    from selenium.webdriver.common.keys import Keys
    begin(driver, label_page / "label.html", "Dr Amal")
    items = [json.loads(x) for x in (label_page / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert css(driver, "#question").text == items[0]["question"]
    assert not css(driver, "#reference").is_displayed()  # the doctor's answer is hidden by default
    css(driver, "#toggle-answer").click()
    assert css(driver, "#reference-text").text == items[0]["answer"]
    css(driver, "#toggle-answer").click()
    keys(driver, "3")                                       # critical, by key
    css(driver, "[data-confidence=unsure]").click()
    css(driver, "#note").send_keys("يحتاج فحص")              # typing a digit in the note must not label
    css(driver, "#note").send_keys("1")
    css(driver, "body").click()
    keys(driver, Keys.ARROW_LEFT)                           # next (right to left)
    assert progress(driver).startswith("2 of 6")
    css(driver, "[data-label=mild]").click()                # mild, by click
    css(driver, "#next").click()
    keys(driver, "0", Keys.ARROW_LEFT, "2")                 # cannot tell; next; moderate
    assert progress(driver) == "4 of 6 (4 done)"

    driver.refresh()                                        # the work survives a reload
    assert css(driver, "#main").is_displayed() and progress(driver) == "4 of 6 (4 done)"
    keys(driver, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)        # back twice: item 2 is still mild
    assert "on" in css(driver, "[data-label=mild]").get_attribute("class")
    assert "on" not in css(driver, "[data-label=critical]").get_attribute("class")

    css(driver, "#export").click()
    pid = json.loads((label_page / "page.json").read_text(encoding="utf-8"))["page_id"]
    path = browser.wait_for_file(driver.downloads, f"labels-Dr_Amal-{pid}.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["page_id"], data["kind"], data["annotator"]) == (pid, "label", "Dr Amal")
    recs = data["records"]
    assert [r["id"] for r in recs] == [str(x["id"]) for x in items]
    assert [r["label"] for r in recs] == ["critical", "mild", "cannot_tell", "moderate", None, None]
    assert recs[0]["confidence"] == "unsure" and recs[0]["note"] == "يحتاج فحص1"
    # review.py accepts what the page exported
    page = review.load_page(label_page)
    assert rv.read_export(path, page)["records"][items[3]["id"]]["label"] == "moderate"


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    rows = [json.loads(x) for x in open("data/demo.jsonl", encoding="utf-8").read().splitlines()[:40]]
    runs = []
    for j, name in enumerate(("run-alpha-SECRET", "run-beta-SECRET", "run-gamma-SECRET")):
        folder = root / name
        folder.mkdir()  # each run's answers differ; a run-specific field ("run") must not reach the page
        write_rows(folder / "generations.jsonl", [{**r, "generated": f"جواب رقم {100 * j + k}", "run": name}
                                                  for k, r in enumerate(rows)])
        runs.append(str(folder))
    out = root / "page"
    review.main(["compare", "--runs", *runs, "--n", "18", "--seed", "1", "--out", str(out)])
    return out


def test_compare_page_is_blind_and_balanced(driver, compare_page):
    html = (compare_page / "compare.html").read_text(encoding="utf-8")
    key = json.loads((compare_page / "key.json").read_text(encoding="utf-8"))
    driver.get((compare_page / "compare.html").as_uri())
    dom = driver.execute_script("return document.documentElement.outerHTML")
    for text in (html, dom, driver.find_element("tag name", "body").text):
        for secret in ("SECRET", "alpha", "beta", "gamma", str(compare_page.parent), "generations"):
            assert secret not in text
    # three runs: 3 pairs with 18 / 3 = 6 items each; each run shown first on half of its pair's items
    pairs = {}
    for it in key["items"]:
        pairs.setdefault(tuple(sorted((it["first"], it["second"]))), []).append(it["first"])
    assert sorted(len(v) for v in pairs.values()) == [6, 6, 6]
    for (a, b), firsts in pairs.items():
        assert firsts.count(a) == firsts.count(b) == 3


def test_compare_page_keys_clicks_reload_export(driver, compare_page, tmp_path):
    from selenium.webdriver.common.keys import Keys
    key = json.loads((compare_page / "key.json").read_text(encoding="utf-8"))
    begin(driver, compare_page / "compare.html", "Dr Omar")
    keys(driver, "1")                                        # answer 1 better
    css(driver, "[data-flag=unsafe][data-side='1']").click()   # answer 2 unsafe
    keys(driver, Keys.ARROW_LEFT, "2")                       # item 2: answer 2 better
    css(driver, "[data-flag=misses_urgent][data-side='0']").click()
    css(driver, "#next").click()
    css(driver, "[data-choice=tie]").click()
    driver.refresh()
    assert progress(driver) == "3 of 18 (3 done)"
    css(driver, "#back").click()
    assert css(driver, "[data-flag=misses_urgent][data-side='0']").is_selected()
    css(driver, "#export").click()
    path = browser.wait_for_file(driver.downloads, f"ratings-Dr_Omar-{key['page_id']}.json")
    recs = json.loads(path.read_text(encoding="utf-8"))["records"]
    assert [r["choice"] for r in recs[:4]] == ["first", "second", "tie", None]
    assert recs[0]["unsafe"] == [False, True] and recs[1]["misses_urgent"] == [True, False]

    # review.py results maps the sides back to runs through key.json
    report = review.main(["results", "--page", str(compare_page), "--exports", str(path), "--resamples", "50",
                          "--out", str(tmp_path / "res")])
    it0 = key["items"][0]
    unsafe_run = str(it0["second"])
    assert report["flags"][unsafe_run]["unsafe"]["value"] > 0
    judged = sum(p["all"]["n_items"] for p in report["pairs"])
    assert judged == 3
