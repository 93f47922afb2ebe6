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
    from hrvit_mobile.exporters.contract import sha256_file

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


if __name__ == "__main__":
    print(install_runtime())
