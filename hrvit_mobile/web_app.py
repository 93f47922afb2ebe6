"""The static web app of a web bundle: the page (``demo_app_assets/web``) and MediaPipe's vendored runtime.

The page runs the bundle's .tflite with ``@mediapipe/tasks-vision``'s ImageSegmenter in WebAssembly. The
runtime files come from an npm install of the versions pinned in ``demo_app_assets/web/package-lock.json``
(``npm ci`` into a cache folder, once per lock file) and are copied into the bundle, so the page needs
nothing but the folder it is served from. ``python -m hrvit_mobile.web_app`` fills the cache ahead of
time (CI does this while installing, so that tests run offline).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.labels import assets_dir

RUNTIME_PACKAGE = "@mediapipe/tasks-vision"
VENDOR_DIR = "vendor/tasks-vision"
# what the page loads: the ES module, and the wasm pair FilesetResolver picks (SIMD where the browser has it)
RUNTIME_FILES = (
    "vision_bundle.mjs",
    "wasm/vision_wasm_internal.js",
    "wasm/vision_wasm_internal.wasm",
    "wasm/vision_wasm_nosimd_internal.js",
    "wasm/vision_wasm_nosimd_internal.wasm",
)
PAGE_FILES = ("index.html", "app.js", "style.css")
CACHE_ENV = "HRVIT_MOBILE_WEB_CACHE"


class WebAppError(HRViTMobileError):
    """The web app's runtime cannot be installed or vendored."""


def template_dir() -> Path:
    return assets_dir() / "web"


def _lock() -> dict[str, Any]:
    return json.loads((template_dir() / "package-lock.json").read_text(encoding="utf-8"))


def pinned_runtime() -> dict[str, str]:
    """Name, version and npm integrity of the runtime package, as the lock file pins them."""
    entry = _lock()["packages"][f"node_modules/{RUNTIME_PACKAGE}"]
    return {"package": RUNTIME_PACKAGE, "version": entry["version"], "integrity": entry["integrity"]}


def cache_dir() -> Path:
    """One npm install per lock file: ``$HRVIT_MOBILE_WEB_CACHE`` or ``~/.cache/hrvit-mobile/web``."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hrvit-mobile" / "web")
    digest = hashlib.sha256((template_dir() / "package-lock.json").read_bytes()).hexdigest()[:16]
    return base / digest


def install_runtime() -> Path:
    """The installed runtime package folder; runs ``npm ci`` of the pinned lock file when not cached."""
    prefix = cache_dir()
    package = prefix / "node_modules" / RUNTIME_PACKAGE
    if all((package / f).is_file() for f in RUNTIME_FILES):
        return package
    npm = shutil.which("npm")
    pin = pinned_runtime()
    if npm is None:
        raise WebAppError(f"npm not found: a web bundle vendors {pin['package']} {pin['version']} from npm; "
                          "install Node.js and npm (Debian: apt-get install -y npm), then rerun")
    staging = prefix.with_name(prefix.name + f".staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(template_dir() / name, staging / name)
    proc = subprocess.run(
        [npm, "ci", "--prefix", str(staging), "--ignore-scripts", "--no-audit", "--no-fund"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WebAppError(f"npm ci of {pin['package']} {pin['version']} failed ({last}); a web bundle needs "
                          "the npm registry once, or a filled cache (python -m hrvit_mobile.web_app)")
    shutil.rmtree(prefix, ignore_errors=True)
    staging.rename(prefix)
    return package


def add_web_app(root: Path) -> dict[str, Any]:
    """Copy the page and the vendored runtime into bundle ``root``; return the manifest's ``web`` entry."""
    from hrvit_mobile.exporters.artifacts import sha256_file

    package = install_runtime()
    installed = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"]
    pin = pinned_runtime()
    if installed != pin["version"]:
        raise WebAppError(f"{package} holds {RUNTIME_PACKAGE} {installed}, the lock file pins "
                          f"{pin['version']}; remove {cache_dir()} and rerun")
    for name in PAGE_FILES:
        shutil.copyfile(template_dir() / name, root / name)
        os.chmod(root / name, 0o644)
    vendored = []
    for name in RUNTIME_FILES:
        dst = root / VENDOR_DIR / name
        dst.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(package / name, dst)
        os.chmod(dst, 0o644)
        vendored.append({"path": f"{VENDOR_DIR}/{name}", "sha256": sha256_file(dst)})
    for d in sorted({p.parent for p in (root / VENDOR_DIR).rglob("*")} | {root / "vendor"}):
        os.chmod(d, 0o755)
    return {
        "page": "index.html",
        "runtime": pin,
        "vendor_dir": VENDOR_DIR,
        "vendored_files": vendored,
        "serve": "python3 -m http.server --bind 127.0.0.1 8000 (in this folder), then open "
                 "http://127.0.0.1:8000/",
    }


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
# headless, software rendering, and none of chromium's own network traffic (updates, sync, field trials)
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromiumPage:
    """A bundle folder served by ``python -m http.server`` on 127.0.0.1 and opened in Debian's headless
    chromium through its chromedriver (Selenium; its manager is bypassed and kept offline)."""

    def __init__(
        self, folder: Path, window: tuple[int, int] = (1000, 900), flags: tuple[str, ...] = ()
    ) -> None:
        import socket
        import sys
        import time

        os.environ.setdefault("SE_AVOID_STATS", "true")
        os.environ.setdefault("SE_OFFLINE", "true")
        from selenium import webdriver
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
                    raise WebAppError(f"http.server did not start on 127.0.0.1:{self.port}") from None
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*BROWSER_FLAGS, f"--window-size={window[0]},{window[1]}", *flags):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        try:
            service = Service(executable_path=str(CHROMEDRIVER))  # an explicit driver: no Selenium Manager
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception:
            self.server.kill()
            raise
        self.url = f"http://127.0.0.1:{self.port}/"

    def self_test(self, timeout: float = 300) -> tuple[str, float, str]:
        """Open the page and wait for ``#self-test`` to leave ``running``: (status, agreement, text)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.get(self.url)
        el = self.driver.find_element(By.ID, "self-test")
        WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(
            lambda _: el.get_attribute("data-status") != "running")
        return el.get_attribute("data-status"), float(el.get_attribute("data-agreement")), el.text

    def segment_photo(self, image: Path, timeout: float = 300) -> str:
        """Choose ``image`` in the page's photo picker, wait for its overlay; return the legend's classes."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.find_element(By.ID, "photo").send_keys(str(Path(image).resolve()))
        WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(
            lambda d: Path(image).name in d.find_element(By.ID, "status").text)
        return ", ".join(self.driver.find_element(By.ID, "legend").text.splitlines())

    def requested_urls(self) -> list[str]:
        """Every URL the page has requested so far (from chromium's network log)."""
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

    def __enter__(self) -> ChromiumPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    print(install_runtime())
