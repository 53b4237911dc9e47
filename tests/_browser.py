"""Headless Chromium for the page tests (the explorer, the chat page), driven by Selenium; never downloads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def chromium_driver(width: int = 1400, height: int = 1000):
    """A headless Debian Chromium driven by Selenium, never downloading anything; skips when missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"browser test needs {', '.join(missing)}: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    user_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"attnlab-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={user_dir}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def script_errors(driver) -> list[str]:
    """The page's JavaScript errors since the last call (the console's SEVERE entries, less HTTP error statuses)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]]
