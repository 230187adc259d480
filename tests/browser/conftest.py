"""Browser tests: the system's headless Chromium, driven through the system's chromedriver
(explicit paths: Selenium Manager never downloads a browser or driver), against
pytest-django's live server (static files served from the apps, as ``collectstatic``
would). A failing test leaves a screenshot of the page in its tmp dir, path printed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

# The delivery tier's fixtures: users, the project's broker, an in-process worker, dead letters.
from tests.delivery.conftest import (  # noqa: F401
    alice,
    api,
    bob,
    conversation,
    dead_letters,
    project_broker,
    run_worker,
)

#: The narrow laptop screen the dead-letter list must fit.
WINDOW_WIDTH_PX = 1366
WINDOW_HEIGHT_PX = 900

#: How long a page gets to show what a test waits for, in seconds.
WAIT_S = 15

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium at 1,366 px; a screenshot saved when the test fails."""
    driver_path = shutil.which("chromedriver")
    if driver_path is None or not Path(CHROMIUM).exists():
        pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--lang=en-US",
        f"--window-size={WINDOW_WIDTH_PX},{WINDOW_HEIGHT_PX}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        if request.node.stash.get(FAILED, False):
            shot = tmp_path / "failure.png"
            driver.save_screenshot(str(shot))
            print(f"\nScreenshot of the failing page ({driver.current_url}): {shot}")
        driver.quit()


class Page:
    """A browser on the live server, with waits for what a test looks for."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait(self, condition: Callable[[WebDriver], Any], what: str) -> Any:
        return WebDriverWait(self.driver, WAIT_S).until(condition, message=f"waiting for {what}")

    def find(self, css: str) -> WebElement:
        return self.wait(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)), css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        self.wait(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css)), css).click()

    def text(self, css: str) -> str:
        return self.find(css).text

    def shot(self, name: str) -> None:
        """Keep a screenshot of the page (in ``BROWSER_SCREENSHOTS_DIR`` when set)."""
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))


@pytest.fixture
def page(browser: WebDriver, live_server: Any, tmp_path: Path) -> Page:
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return Page(browser, live_server.url, shots)
