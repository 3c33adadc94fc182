"""A real browser for the pages' tests: Debian's Chromium, driven by Selenium through Debian's chromedriver.

No browser is downloaded (none can be here): `.ci/run` installs the ``chromium`` and ``chromium-driver``
packages and this module finds their executables. Headless; ``--no-sandbox`` because CI runs as root, where
Chromium's sandbox refuses to start. `screenshot` saves a page under ``tests/artifacts/screenshots/`` (kept as
a test artifact and linked from the docs).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

__all__ = ["SCREENSHOTS", "browser", "screenshot"]

SCREENSHOTS = Path(__file__).parent / "artifacts" / "screenshots"

_CHROMIUM = ("chromium", "chromium-browser")
_DRIVER = ("chromedriver",)


def _executable(names: tuple[str, ...], package: str) -> str:
    for name in names:
        if found := shutil.which(name):
            return found
    pytest.fail(f"{names[0]} is not installed: `apt-get install {package}` (.ci/run installs it)")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium per test (its own profile: no cookies carry over between tests)."""
    options = Options()
    options.binary_location = _executable(_CHROMIUM, "chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(options=options, service=Service(_executable(_DRIVER, "chromium-driver")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save the current page as ``tests/artifacts/screenshots/NAME.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
