"""A headless Debian chromium driven by selenium, for the tests of review.py's pages and for
`make screenshots` (tools/review_screenshots.py). Test-only: selenium is in requirements-dev.txt."""
import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = ("install them with `apt-get install chromium chromium-driver` and `pip install selenium` "
           "(.ci/run does this before make test)")


def missing():
    """Why a browser cannot be started here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} not found: {INSTALL}"
    return None


def start(download_dir, profile_dir, width=1280, height=900):
    """A headless chromium (no network services, fresh profile) that saves downloads to download_dir."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    driver_path = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def wait_for_file(folder, pattern, timeout=10.0):
    """The one file matching pattern in folder once its download is complete."""
    end = time.time() + timeout
    while time.time() < end:
        done = [p for p in Path(folder).glob(pattern) if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} downloaded into {folder} within {timeout} s: {list(Path(folder).iterdir())}")
