"""The web bundle in a real browser: Debian's headless chromium, driven by Selenium through Debian's
chromedriver, loads the page from ``python -m http.server`` on 127.0.0.1; MediaPipe's ImageSegmenter
(vendored WebAssembly) runs the bundle's .tflite on the golden image and the page reports the self-test.

Nothing leaves 127.0.0.1: Selenium Manager is bypassed (explicit driver path, SE_AVOID_STATS, SE_OFFLINE),
chromium's background services are off, npm runs offline (the runtime comes from the cache the
install fills), and every request the page made is checked against the local server's address.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import IN_CI, require_module

from hrvit_mobile.bundle import MANIFEST, build_bundle, verify_bundle
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.contract import sha256_file
from hrvit_mobile.exporters.testing import TinySegmenter

require_module("litert_torch")
webdriver = require_module("selenium.webdriver")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    if IN_CI:
        pytest.fail("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

SIZE = (128, 128)
CLASSES = ["sky", "road", "car", "tree", "person"]
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1000,900")


def _export(seed: int, out: Path) -> Path:
    spec = ExportSpec(target="tflite", bits=32, img_size=SIZE, num_classes=len(CLASSES), out_dir=out,
                      model_name="tiny", class_names=CLASSES)
    return export(TinySegmenter(num_classes=len(CLASSES), seed=seed).eval(), spec).artifact.path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A web bundle of a tiny model, and the same bundle with another model's .tflite swapped in and the
    manifest's hashes regenerated around it (so that ``--verify`` accepts it)."""
    tmp = tmp_path_factory.mktemp("web")
    mp = pytest.MonkeyPatch()
    mp.setenv("npm_config_offline", "true")  # npm may only use what the install cached
    try:
        good = build_bundle("web", [_export(0, tmp / "a")], tmp / "good",
                            reference=TinySegmenter(num_classes=len(CLASSES), seed=0))
    finally:
        mp.undo()
    swapped = tmp / "swapped"
    shutil.copytree(good.path, swapped)
    shutil.copyfile(_export(1, tmp / "b"), swapped / "model.tflite")
    manifest = json.loads((swapped / MANIFEST).read_text())
    for f in manifest["files"]:
        f["sha256"], f["size_bytes"] = sha256_file(swapped / f["path"]), (swapped / f["path"]).stat().st_size
    (swapped / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    verify_bundle(swapped)
    return {"good": good.path, "swapped": swapped}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Page:
    """``python -m http.server`` on 127.0.0.1 serving a bundle, and headless chromium on its page."""

    def __init__(self, folder: Path) -> None:
        from selenium.webdriver.chrome.service import Service

        self.port = _free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory",
             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    self.server.kill()
                    raise
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in BROWSER_FLAGS:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        self.url = f"http://127.0.0.1:{self.port}/"

    def self_test(self, timeout: float = 240) -> tuple[str, float, str]:
        """Open the page and wait for ``#self-test`` to leave ``running``: (status, agreement, text)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(self.url)
        el = self.driver.find_element(By.ID, "self-test")
        WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(
            lambda _: el.get_attribute("data-status") != "running")
        return el.get_attribute("data-status"), float(el.get_attribute("data-agreement")), el.text

    def requested_urls(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def close(self) -> None:
        self.driver.quit()
        self.server.terminate()
        self.server.wait(timeout=30)


@pytest.fixture(autouse=True)
def _no_selenium_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")


def test_web_bundle_contents(bundles: dict[str, Path]) -> None:
    """The page, the vendored runtime (with its pinned version and hashes) and the self-test data."""
    manifest = verify_bundle(bundles["good"])
    web = manifest["web"]
    lock = json.loads((Path(__file__).parents[1] / "demo_app_assets/web/package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/@mediapipe/tasks-vision"]
    assert web["runtime"] == {"package": "@mediapipe/tasks-vision", "version": pinned["version"],
                              "integrity": pinned["integrity"]}
    for f in web["vendored_files"]:
        assert sha256_file(bundles["good"] / f["path"]) == f["sha256"]
    page = (bundles["good"] / "index.html").read_text() + (bundles["good"] / "app.js").read_text()
    assert re.findall(r"https?://", page) == []  # the page names no other origin: all comes from the bundle
    test = manifest["self_test"]
    assert test["shape"] == list(SIZE) and test["min_agreement"] == {"model.tflite": 0.98}
    assert (bundles["good"] / test["expected_classes"]).stat().st_size == SIZE[0] * SIZE[1]


def test_self_test_passes_in_chromium_and_fails_with_a_swapped_model(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    page = _Page(bundles["good"])
    try:
        status, agreement, text = page.self_test()
        urls = page.requested_urls()
        page.driver.save_screenshot(str(tmp_path / "good.png"))
    finally:
        page.close()
    print(f"web self-test, bundle as built: {status}, agreement {agreement:.6f}")
    assert status == "pass", text
    assert 0.98 <= agreement <= 1
    local = (page.url, "data:", "blob:")
    assert urls and [u for u in urls if not u.startswith(local)] == []
    assert any(u.endswith("model.tflite") for u in urls)
    assert any(u.endswith("vision_wasm_internal.wasm") for u in urls)

    page = _Page(bundles["swapped"])
    try:
        status, agreement, text = page.self_test()
    finally:
        page.close()
    print(f"web self-test, another model swapped in: {status}, agreement {agreement:.6f}")
    assert status == "fail", text
    assert agreement < 0.98


def test_no_npm_means_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """With an empty runtime cache and no npm on PATH: one line, exit 2, nothing written."""
    from hrvit_mobile.cli import main

    artifact = _export(0, tmp_path / "a")
    monkeypatch.setenv("HRVIT_MOBILE_WEB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    capsys.readouterr()
    assert main(["bundle", "--app", "web", "--artifact", str(artifact), "--out", str(tmp_path / "web")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "npm not found" in err and "@mediapipe/tasks-vision" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no bundle, no staging left
