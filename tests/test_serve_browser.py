"""The page at ``GET /`` in a real browser: Debian's headless ``chromium`` driven by ``chromium-driver`` through
selenium loads it, submits water, waits for the 10 views, the energies and the prediction, and checks the
screenshot is a picture (not a blank page). Without chromium, chromium-driver or selenium the test is skipped,
except under CI (``CI=true``), where ``.ci/run`` installs them and their absence is a failure."""
from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from serve_helpers import Service, exported_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package})"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    why = _missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run under CI: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    home = tmp_path_factory.mktemp("chromium-home")  # chromium's profile and caches stay out of ~
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1500", f"--user-data-dir={home / 'profile'}", "--no-first-run"):
        opts.add_argument(arg)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_CONFIG_HOME": str(home / "config")}
    driver = webdriver.Chrome(service=DriverService(DRIVER, env=env), options=opts)
    driver.set_page_load_timeout(300)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def service(browser, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-browser")
    model, _ = exported_model(tmp_path_factory)
    svc = Service(["--model", str(model), "--cache", str(folder / "cache")], folder / "serve.log")
    try:
        svc.wait_ready()
        yield svc
    finally:
        assert svc.stop() == 0, svc.output()[-3000:]


def _wait(driver, what, deadline_s: float = 900):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = what(driver)
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"the page did not get there in {deadline_s} s: {driver.find_element('tag name', 'body').text}")


def test_the_page_renders_water_and_shows_its_prediction(browser, service, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    browser.get(service.url + "/")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "model: " in browser.find_element(By.ID, "model-line").text
    browser.find_element(By.CSS_SELECTOR, "[data-example=water]").click()
    browser.find_element(By.ID, "run").click()
    loaded = ("return Array.from(document.querySelectorAll('img.view'))"
              ".filter(i => i.complete && i.naturalWidth > 0).length")
    _wait(browser, lambda d: d.execute_script(loaded) == 10)
    assert browser.find_element(By.ID, "render-status").text.startswith("Done")
    energies = browser.find_element(By.ID, "energies").text
    assert all(k in energies for k in ("E1", "E6")) and "-76.4" in energies
    badge = browser.find_element(By.CSS_SELECTOR, "#predict-out .badge")
    assert badge.get_attribute("data-verdict") in ("in", "warn", "refused")
    assert "eV" in browser.find_element(By.ID, "predict-out").text

    browser.execute_script("document.getElementById('render-panel').scrollIntoView()")
    png = browser.get_screenshot_as_png()
    (tmp_path / "page.png").write_bytes(png)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert shot.shape[0] > 500 and shot.shape[1] > 800
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 200 and shot.std() > 20, f"a blank-looking page: {colours} colours, std {shot.std():.1f}"
    tile = _ed_tile(browser, shot)
    assert tile.size and (tile.sum(axis=2) < 60).mean() > 0.3 and tile.std() > 20

    # the same molecule again: answered from the finished job at once, the same views
    first = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "img.view")]
    browser.execute_script("document.getElementById('render-out').innerHTML = ''")
    browser.find_element(By.ID, "run").click()
    _wait(browser, lambda d: d.execute_script(loaded) == 10, deadline_s=120)
    assert [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, "img.view")] == first


def _ed_tile(browser, shot):
    """The first ED view as it appears in the screenshot ``shot``."""
    # the ED views are on the screen: the dark ED background with the red/blue ESP surface inside
    box = browser.execute_script("const r = document.querySelector('#ed-views img').getBoundingClientRect();"
                                 "return [r.x, r.y, r.width, r.height, window.devicePixelRatio];")
    x, y, w, h = (int(v * box[4]) for v in box[:4])
    return shot[y:y + h, x:x + w].astype(int)
