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
from pathlib import Path

import pytest
from conftest import IN_CI, require_module

from hrvit_mobile.bundle import MANIFEST, build_bundle, verify_bundle
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.artifacts import sha256_file
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.web_app import CHROMEDRIVER, CHROMIUM, ChromiumPage

require_module("litert_torch")
require_module("selenium.webdriver")

if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    if IN_CI:
        pytest.fail("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

SIZE = (128, 128)
CLASSES = ["sky", "road", "car", "tree", "person"]


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


def test_self_test_passes_in_chromium_and_fails_with_a_swapped_model(bundles: dict[str, Path]) -> None:
    with ChromiumPage(bundles["good"]) as page:
        status, agreement, text = page.self_test()
        urls = page.requested_urls()
    print(f"web self-test, bundle as built: {status}, agreement {agreement:.6f}")
    assert status == "pass", text
    assert 0.98 <= agreement <= 1
    local = (page.url, "data:", "blob:")
    assert urls and [u for u in urls if not u.startswith(local)] == []
    assert any(u.endswith("model.tflite") for u in urls)
    assert any(u.endswith("vision_wasm_internal.wasm") for u in urls)

    with ChromiumPage(bundles["swapped"]) as page:
        status, agreement, text = page.self_test()
    print(f"web self-test, another model swapped in: {status}, agreement {agreement:.6f}")
    assert status == "fail", text
    assert agreement < 0.98


def test_camera_stream_is_segmented(bundles: dict[str, Path]) -> None:
    """chromium's fake camera (a generated 640x480 test pattern, no device) through the Start camera button:
    frames are segmented and drawn at the stream's size with a legend of the classes seen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake_camera = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with ChromiumPage(bundles["good"], flags=fake_camera) as page:
        assert page.self_test()[0] == "pass"
        page.driver.find_element(By.ID, "camera").click()
        WebDriverWait(page.driver, 120, poll_frequency=0.5).until(
            lambda d: d.find_element(By.ID, "status").text.startswith("camera: "))
        size = page.driver.find_element(By.ID, "status").text.removeprefix("camera: ")
        canvas = page.driver.find_element(By.ID, "view")
        assert f"{canvas.get_attribute('width')}x{canvas.get_attribute('height')}" == size == "640x480"
        legend = page.driver.find_element(By.ID, "legend").text.splitlines()
        assert legend and set(legend) <= set(CLASSES)
        urls = page.requested_urls()
    assert [u for u in urls if not u.startswith((page.url, "data:", "blob:"))] == []


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
