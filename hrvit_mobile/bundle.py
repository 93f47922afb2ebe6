"""Demo-app bundles: one folder an iOS or Android app takes as it is, sealed by ``model_info.json``.

A bundle holds the model file(s) under fixed names (``model.mlpackage`` / ``model.pte`` /
``model.tflite``, each with a sidecar JSON so :func:`hrvit_mobile.exporters.open_artifact` runs it),
``labels.json`` + ``labels.txt`` + ``palette.txt``, a README for the app developer and the manifest
``model_info.json``: input and output contract, classes, bits, tool versions and the sha256 of every
other file. The same artifacts give the same bytes: files are written in sorted order with fixed
permissions, JSON with sorted keys, and nothing time- or host-dependent is recorded.

:func:`verify_bundle` is what refuses a bad bundle before an app sees it: a hash that does not match,
a file missing or not listed, labels whose count differs from the model's classes, a path that leaves
the bundle folder (``..``, absolute, or a symlink pointing out), and manifest fields (img_size, input
and output shapes, each model entry) that disagree with the model files, one line per field.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from hrvit_mobile import selftest
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.exporters.registry import apps, get_backend, target_names
from hrvit_mobile.labels import LabelSet, labels_for

BUNDLE_SCHEMA = "hrvit-mobile.bundle/1"
MANIFEST = "model_info.json"
LABELS_JSON = "labels.json"
LABELS_TXT = "labels.txt"
PALETTE_TXT = "palette.txt"
README = "README.md"
# fields of an export sidecar that vary from run to run (timings, memory): left out of bundles
_VOLATILE = ("export_seconds", "peak_rss_bytes")
_FILE_MODE, _DIR_MODE = 0o644, 0o755


class BundleError(HRViTMobileError):
    """A bundle cannot be built from these inputs, or a bundle on disk is not valid."""


@dataclass
class BundleResult:
    path: Path
    manifest: dict[str, Any]

    def listing(self) -> str:
        """One line per file: size and path (what the closing note shows)."""
        rows = [(f["size_bytes"], f["path"]) for f in self.manifest["files"]]
        rows.append(((self.path / MANIFEST).stat().st_size, MANIFEST))
        return "\n".join(f"{size:>10,d}  {path}" for size, path in sorted(rows, key=lambda r: r[1]))


def _canonical_target(target: str) -> str:
    return get_backend(target).name


def _app_targets(app: str) -> tuple[str, ...]:
    """The targets whose artifacts ``app`` loads, as the backends declare them."""
    return tuple(b.name for b in apps().get(app, ()))


def _check_app(app: str) -> None:
    if app not in apps():
        raise BundleError(f"unknown app {app!r}: use one of {', '.join(apps())}")


def _load_artifact(path: Path, app: str, allow_failed_parity: bool) -> dict[str, Any]:
    """The artifact's sidecar, after checking it is for this app, intact and passed parity."""
    from hrvit_mobile.exporters import read_sidecar
    from hrvit_mobile.exporters.artifacts import sha256_file

    if not path.exists():
        raise BundleError(f"artifact not found: {path}")
    meta = read_sidecar(path)
    target = _canonical_target(meta["target"])
    if target not in _app_targets(app):
        allowed = " or ".join(b.suffix for b in apps()[app])
        raise BundleError(f"{path.name}: the {app} app cannot load {target} artifacts; it takes {allowed}")
    root = path.parent
    for f in meta.get("files", []):
        if not f["path"].startswith(path.name):
            continue  # companions (.bpte, .etrecord) are not bundled
        if sha256_file(root / f["path"]) != f["sha256"]:
            raise BundleError(
                f"{path.name}: {f['path']} changed since export (sha256 differs from its sidecar)"
            )
    parity = meta.get("parity") or {}
    if parity.get("passed") is False and not allow_failed_parity:
        raise BundleError(
            f"{path.name} failed parity ({parity.get('reason')}); re-export, or pass --allow-failed-parity"
        )
    return meta


def _copy_tree_sorted(src: Path, dst: Path) -> None:
    """Copy a file or directory (file by file, sorted) with fixed permissions."""
    if src.is_dir():
        dst.mkdir(mode=_DIR_MODE)
        for child in sorted(src.iterdir(), key=lambda p: p.name):
            if child.is_symlink():
                raise BundleError(f"{child}: symlinks inside a model package are not bundled")
            _copy_tree_sorted(child, dst / child.name)
        os.chmod(dst, _DIR_MODE)
    else:
        shutil.copyfile(src, dst)
        os.chmod(dst, _FILE_MODE)


def _canonical_mlpackage_manifest(package: Path) -> None:
    """coremltools names a package's items with random UUIDs; derive them from the item paths instead,
    so that the same model gives the same bytes (the identifiers only link entries to each other)."""
    manifest = package / "Manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    entries = data.get("itemInfoEntries", {})
    renamed = {
        key: str(uuid.uuid5(uuid.NAMESPACE_URL, f"hrvit-mobile:{entry['path']}")).upper()
        for key, entry in entries.items()
    }
    data["itemInfoEntries"] = {renamed[k]: v for k, v in entries.items()}
    if data.get("rootModelIdentifier") in renamed:
        data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    _write_text(manifest, json.dumps(data, indent=4, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, _FILE_MODE)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _files_of(root: Path) -> list[dict[str, Any]]:
    from hrvit_mobile.exporters.artifacts import sha256_file

    out = []
    for p in sorted(root.rglob("*"), key=lambda q: q.relative_to(root).as_posix()):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            out.append({"path": rel, "sha256": sha256_file(p), "size_bytes": p.stat().st_size})
    return out


def _parity_summary(parity: dict[str, Any] | None) -> dict[str, Any] | None:
    if not parity:
        return None
    keys = (
        "runtime", "ran", "passed", "samples", "max_abs_err", "mean_abs_err", "cosine", "argmax_agreement"
    )
    return {k: parity.get(k) for k in keys}


def _app_contract(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input/output an app feeds and reads, common to every runtime in the bundle."""
    h, w = meta["img_size"]
    k = meta["num_classes"]
    norm = meta["input"]["normalization"]
    inp = {
        "name": "image",
        "shape": [1, 3, h, w],
        "layout": "NCHW",
        "dtype": "float32",
        "color": "RGB",
        "normalization": {
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
            "formula": "(pixel / 255 - mean) / std, per RGB channel",
        },
    }
    out = {
        "name": "logits",
        "shape": [1, k, h // 4, w // 4],
        "layout": "NCHW",
        "dtype": "float32",
        # this NCHW contract's own words, not the first artifact's (the .tflite's logits are NHWC)
        "meaning": "class logits at 1/4 input resolution; argmax over axis 1 gives the class map",
    }
    return inp, out


def _model_entry(target: str, meta: dict[str, Any]) -> dict[str, Any]:
    backend = get_backend(target)
    name = backend.app_file
    entry = {
        "runtime": target,
        "file": name,
        "sidecar": f"{name}.json",
        "variant": meta["variant"],
        "bits": meta["bits"],
        "activations": meta["activations"],
        "input": meta["input"],
        "outputs": meta["outputs"],
        "size_bytes": meta["size_bytes"],
        "parity": _parity_summary(meta.get("parity")),
        "tool_versions": meta.get("tool_versions", {}),
        **backend.app_entry,
    }
    return entry


def _bundled_sidecar(target: str, meta: dict[str, Any], labels: LabelSet, root: Path) -> dict[str, Any]:
    """The export sidecar as the bundled copy needs it: fixed names, bundle labels, no timings."""
    name = get_backend(target).app_file
    side = {k: v for k, v in meta.items() if k not in _VOLATILE}
    if side.get("parity"):
        side["parity"] = {k: v for k, v in side["parity"].items() if k != "seconds"}
    if isinstance(side.get("details"), dict):  # per-step export timings
        side["details"] = {k: v for k, v in side["details"].items() if k != "step_seconds"}
    side["artifact"] = name
    side["classes"] = list(labels.classes)
    side["files"] = [f for f in _files_of(root) if f["path"] == name or f["path"].startswith(name + "/")]
    return side


def _readme(app: str, manifest: dict[str, Any]) -> str:
    inp, out = manifest["input"], manifest["output"]
    def parity(m: dict[str, Any]) -> str:
        if not m["parity"]:
            return "parity not recorded"
        return f"parity {'PASS' if m['parity']['passed'] else 'FAIL'} in {m['parity']['runtime']}"

    models = "\n".join(
        f"- `{m['file']}`: {m['runtime']} {m['variant']} ({m['bits']}-bit weights, {m['activations']} "
        f"activations), {parity(m)}"
        for m in manifest["models"]
    )
    mean = ", ".join(f"{v:g}" for v in inp["normalization"]["mean"])
    std = ", ".join(f"{v:g}" for v in inp["normalization"]["std"])
    template = f"demo_app_assets/{app}"
    notes = dict.fromkeys(get_backend(m["runtime"]).app_note for m in manifest["models"])
    backend_notes = "".join(f"\n{note}\n" for note in notes if note)
    return f"""# {manifest['model']} segmentation bundle for {app}

Written by `hrvit-mobile bundle`; `hrvit-mobile bundle --verify <this folder>` checks it (hashes,
labels, paths). Do not edit files by hand: the manifest `{MANIFEST}` holds their sha256.

## Models
{models}

## Input
`{inp['name']}`: {inp['dtype']} {inp['layout']} {inp['shape']}, {inp['color']}; resize the frame to
{inp['shape'][3]}x{inp['shape'][2]} (width x height), then per channel `(pixel / 255 - mean) / std` with
mean ({mean}) and std ({std}).
{backend_notes}
## Output
`{out['name']}`: {out['dtype']} {out['layout']} {out['shape']}: {out['meaning']}. Upsample the logits
(bilinear) or the class map (nearest) to the frame and colour each pixel with its class's colour.

## Labels
`{LABELS_TXT}`: {manifest['num_classes']} class names, one per line, in output-channel order
({manifest['labels']['dataset']}). `{PALETTE_TXT}`: the matching colour per line as `R G B` (0..255).
`{LABELS_JSON}`: both in one JSON document.

## Self-test
`{manifest['self_test']['image']}` and `{manifest['self_test']['expected_classes']}`: a golden image and
the class map the float model gives it ({manifest['self_test']['dtype']}, row-major
{manifest['self_test']['shape'][0]}x{manifest['self_test']['shape'][1]}). Run the image once at first
launch and compare class by class; the bundle passes at the `min_agreement` its manifest gives per model.
{_web_readme(manifest) if app == "web" else ""}
## App sources
Templates that load this bundle, run a camera frame and draw the overlay: `{template}` in the
hrvit-mobile repository. Their `ModelConfig` constants are checked against this manifest by the
project's tests.
"""


def _web_readme(manifest: dict[str, Any]) -> str:
    rt = manifest["web"]["runtime"]
    return (f"\n## Web app\n`index.html` runs `model.tflite` with {rt['package']} {rt['version']} "
            f"(vendored in `{manifest['web']['vendor_dir']}`); serve this folder: "
            f"`{manifest['web']['serve']}`. The page's element `#self-test` shows the self-test "
            "(`data-status`, `data-agreement`).\n")


def build_bundle(
    app: str,
    artifacts: list[Path | str],
    out: Path | str,
    labels: str | Path | None = None,
    allow_failed_parity: bool = False,
    reference: Any = None,
) -> BundleResult:
    """Write a bundle for ``app`` (``ios``, ``android`` or ``web``) from exported artifacts (each with its
    sidecar).

    ``reference`` is the float PyTorch model whose class map the bundle's self-test expects (without
    it, the float artifact in its Python runtime). The folder is built in a staging directory, verified
    with :func:`verify_bundle`, then moved onto ``out`` atomically; a failure leaves ``out`` as it was.
    """
    from hrvit_mobile.files import commit, staging_dir

    _check_app(app)
    if not artifacts:
        kinds = " and/or ".join(b.suffix.lstrip(".") for b in apps()[app])
        raise BundleError(f"no artifacts: give --artifact PATH (a {app} app takes {kinds}) or --target")
    metas: dict[str, tuple[Path, dict[str, Any]]] = {}
    for a in artifacts:
        path = Path(a)
        meta = _load_artifact(path, app, allow_failed_parity)
        target = _canonical_target(meta["target"])
        if target in metas:
            raise BundleError(
                f"two {target} artifacts ({metas[target][0].name}, {path.name}): one per runtime"
            )
        metas[target] = (path, meta)
    first = next(iter(metas.values()))[1]
    for path, meta in metas.values():
        for key in ("img_size", "num_classes"):
            if meta[key] != first[key]:
                raise BundleError(f"artifacts disagree on {key}: {path.name} has {meta[key]}, another "
                                  f"{first[key]}; bundle artifacts of one model")
    label_set = labels_for(first["num_classes"], labels, first.get("classes"))
    for target, (path, _) in metas.items():
        _check_embedded_labels(target, path, label_set)
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not a bundle: choose a new --out folder")

    with staging_dir(out.parent if str(out.parent) else Path("."), out.name) as stage:
        root = stage / "bundle"
        root.mkdir(mode=_DIR_MODE)
        os.chmod(root, _DIR_MODE)
        for target in sorted(metas):
            path, meta = metas[target]
            dst = root / get_backend(target).app_file
            _copy_tree_sorted(path, dst)
            if dst.suffix == ".mlpackage":
                _canonical_mlpackage_manifest(dst)
        _write_json(root / LABELS_JSON, label_set.as_json())
        _write_text(root / LABELS_TXT, "".join(f"{c}\n" for c in label_set.classes))
        _write_text(root / PALETTE_TXT, "".join(f"{r} {g} {b}\n" for r, g, b in label_set.palette))
        for target in sorted(metas):
            side = _bundled_sidecar(target, metas[target][1], label_set, root)
            _write_json(root / f"{get_backend(target).app_file}.json", side)
        inp, outp = _app_contract(first)
        models = [_model_entry(t, metas[t][1]) for t in sorted(metas)]
        self_test = _self_test(root, first, inp, metas, models, reference)
        manifest: dict[str, Any] = {
            "schema": BUNDLE_SCHEMA,
            "app": app,
            "model": first["model"],
            "img_size": list(first["img_size"]),
            "num_classes": first["num_classes"],
            "input": inp,
            "output": outp,
            "labels": {"dataset": label_set.dataset, "json": LABELS_JSON, "txt": LABELS_TXT,
                       "palette": PALETTE_TXT},
            "classes": list(label_set.classes),
            "models": models,
            "self_test": self_test,
            "tool_versions": {"hrvit-mobile": _version()},
        }
        if app == "web":
            from hrvit_mobile.web_app import add_web_app

            manifest["web"] = add_web_app(root)
        _write_text(root / README, _readme(app, manifest))
        manifest["files"] = _files_of(root)
        _write_json(root / MANIFEST, manifest)
        verify_bundle(root)
        commit(root, out)
    return BundleResult(out, manifest)


def _embedded_labels(target: str, path: Path) -> list[str] | None:
    """The class names a model file carries itself (the backend knows where); None where it carries none."""
    read = get_backend(target).embedded_labels
    return read(path) if read is not None else None


def _check_embedded_labels(target: str, path: Path, label_set: LabelSet) -> None:
    """Refuse a bundle whose labels differ from the names its model file carries, which MediaPipe and the
    apps read from the model itself. Placeholder names (``class_<i>``) carry none: the bundle names them."""
    embedded = _embedded_labels(target, path)
    ours = list(label_set.classes)
    if not embedded or embedded == [f"class_{i}" for i in range(len(embedded))] or embedded == ours:
        return
    fix = "pass --labels with the model's class names"
    if len(embedded) != len(ours):
        raise BundleError(f"{path.name} carries {len(embedded)} labels, the bundle's {label_set.dataset} "
                          f"labels are {len(ours)}; {fix}")
    i = next(i for i, (a, b) in enumerate(zip(embedded, ours)) if a != b)
    raise BundleError(f"{path.name} carries other labels than the bundle's {label_set.dataset} labels "
                      f"(class {i}: {embedded[i]!r} in the model, {ours[i]!r} in the bundle); {fix}")


def _self_test(root: Path, first: dict[str, Any], inp: dict[str, Any], metas: dict[str, Any],
               models: list[dict[str, Any]], reference: Any) -> dict[str, Any]:
    if reference is None:
        run, name = selftest.artifact_reference(metas)
    else:
        norm = inp["normalization"]
        run, name = selftest.torch_reference(reference, norm["mean"], norm["std"]), "the float PyTorch model"
    return selftest.write_self_test(root, tuple(first["img_size"]), run, name, models)


def _version() -> str:
    import hrvit_mobile

    return hrvit_mobile.__version__


def _inside(root: Path, rel: str) -> Path:
    """``root / rel`` after refusing paths that leave ``root`` (absolute, ``..``, symlinks out)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts or not pure.parts:
        raise BundleError(f"{MANIFEST} lists {rel!r}: paths must be relative and stay inside the bundle")
    target = root / pure
    resolved = target.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"{rel} points outside the bundle (to {resolved}); bundles hold their own files")
    return target


# what a manifest that parses but does not hold what it should raises on the way (a missing key, a value of
# the wrong type, a named file that cannot be read)
_MALFORMED = (KeyError, TypeError, AttributeError, IndexError, OSError, UnicodeDecodeError,
              json.JSONDecodeError)


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Check a bundle folder; return its manifest, or raise :class:`BundleError` naming the first fault."""
    try:
        return _verify(path)
    except _MALFORMED as exc:
        raise BundleError(f"{Path(path) / MANIFEST} does not describe a valid bundle ({type(exc).__name__}: "
                          f"{exc}); rebuild the bundle") from None


def _verify(path: Path | str) -> dict[str, Any]:
    from hrvit_mobile.exporters.artifacts import sha256_file

    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} not found")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"{MANIFEST}: schema {manifest.get('schema')!r}, expected {BUNDLE_SCHEMA!r}")
    app = manifest.get("app")
    _check_app(app)

    # every file on disk inside the bundle, symlinks included, must be listed; every listed file must match
    listed = {}
    for f in manifest.get("files", []):
        target = _inside(root, f["path"])
        if not target.is_file():
            raise BundleError(f"{f['path']} is listed in {MANIFEST} but missing from the bundle")
        if target.stat().st_size != f["size_bytes"] or sha256_file(target) != f["sha256"]:
            raise BundleError(
                f"{f['path']}: sha256 does not match {MANIFEST}; the file was changed or corrupted"
            )
        listed[PurePosixPath(f["path"]).as_posix()] = f
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            _inside(root, rel)  # refuses links pointing out of the bundle
        if (p.is_file() or p.is_symlink()) and rel != MANIFEST and rel not in listed:
            raise BundleError(f"{rel} is in the bundle but not in {MANIFEST}; rebuild the bundle")

    k = manifest["num_classes"]
    names = (root / manifest["labels"]["txt"]).read_text(encoding="utf-8").splitlines()
    colours = (root / manifest["labels"]["palette"]).read_text(encoding="utf-8").splitlines()
    labels_json = json.loads((root / manifest["labels"]["json"]).read_text(encoding="utf-8"))
    counts = {
        manifest["labels"]["txt"]: len(names),
        manifest["labels"]["palette"]: len(colours),
        manifest["labels"]["json"]: len(labels_json.get("classes", [])),
        f"{MANIFEST} classes": len(manifest.get("classes", [])),
    }
    for model in manifest.get("models", []):
        if model["runtime"] not in _app_targets(app):
            raise BundleError(f"{model['file']}: the {app} app cannot load {model['runtime']} models")
        _inside(root, model["file"])
        if not (root / model["file"]).exists():
            raise BundleError(f"{model['file']} is in {MANIFEST} models but not in the bundle")
        logits = model["outputs"][0]
        channel_axis = -1 if logits.get("layout") == "NHWC" else 1  # the .tflite's logits are NHWC
        counts[f"{model['file']} output channels"] = logits["shape"][channel_axis]
    for what, n in counts.items():
        if n != k:
            raise BundleError(
                f"{what}: {n} classes, but the model has {k}; labels must match the model's classes"
            )
    if not manifest.get("models"):
        raise BundleError(f"{MANIFEST} lists no models")
    mismatches = _field_mismatches(root, manifest)
    if mismatches:
        raise BundleError("\n".join(mismatches))
    return manifest


def _artifact_io(path: Path, runtime: str) -> tuple[list[int], list[int]] | None:
    """(input shape, logits shape) as the model file itself declares them; None where its runtime's
    package is not installed (the hashes still hold the file to the manifest)."""
    declared = get_backend(runtime).declared_io if runtime in target_names() else None
    if declared is None:
        return None
    try:
        return declared(path)
    except ImportError:
        return None


def _as_nchw(inp: list[int], out: list[int]) -> tuple[list[int], list[int]]:
    """Input and logits shapes in NCHW order: a model whose image input is channels-last (the .tflite's)
    has channels-last logits too."""
    if len(inp) == len(out) == 4 and inp[1] != 3 and inp[3] == 3:
        return [inp[0], inp[3], inp[1], inp[2]], [out[0], out[3], out[1], out[2]]
    return inp, out


def _field_mismatches(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Every manifest field that disagrees with the model files or their bundled sidecars, one line each
    naming the field: img_size, input/output shapes, num_classes, model, and each model entry."""
    lines = []

    def differ(field: str, says: Any, actual: Any, source: str) -> None:
        if says != actual:
            lines.append(f"{MANIFEST} {field} is {says!r}, but {source} has {actual!r}")

    for i, model in enumerate(manifest["models"]):
        path = root / model["file"]
        side = json.loads((root / model["sidecar"]).read_text(encoding="utf-8"))
        differ("model", manifest["model"], side.get("model"), model["sidecar"])
        for key in ("variant", "bits", "activations", "input", "outputs"):
            differ(f"models[{i}].{key}", model.get(key), side.get(key), model["sidecar"])
        if path.is_file():
            differ(f"models[{i}].size_bytes", model.get("size_bytes"), path.stat().st_size, model["file"])
        try:
            shapes = _artifact_io(path, model["runtime"])
        except Exception as exc:  # not a model its runtime reads (and its hash rewritten to match)
            lines.append(f"{MANIFEST} models[{i}].file: the {model['runtime']} runtime cannot read "
                         f"{model['file']} ({type(exc).__name__})")
            continue
        if shapes is None:
            continue
        inp, out = shapes
        differ(f"models[{i}].input.shape", model["input"].get("shape"), inp, model["file"])
        differ(f"models[{i}].outputs[0].shape", model["outputs"][0].get("shape"), out, model["file"])
        nchw_in, nchw_out = _as_nchw(inp, out)
        differ("img_size", manifest["img_size"], nchw_in[2:], model["file"])
        differ("input.shape", manifest["input"].get("shape"), nchw_in, model["file"])
        if len(out) == 4:  # an ML program may leave its output shape undeclared
            differ("output.shape", manifest["output"].get("shape"), nchw_out, model["file"])
            differ("num_classes", manifest["num_classes"], nchw_out[1], model["file"])
    return list(dict.fromkeys(lines))


def bundled_model(bundle: Path | str, runtimes: tuple[str, ...] | None = None) -> Path:
    """The path of the first model in a verified bundle whose runtime is in ``runtimes`` (default: every
    registered target, in registry order)."""
    manifest = verify_bundle(bundle)
    runtimes = target_names() if runtimes is None else runtimes
    for runtime in runtimes:
        for model in manifest["models"]:
            if model["runtime"] == runtime:
                return Path(bundle) / model["file"]
    have = ", ".join(m["runtime"] for m in manifest["models"])
    raise BundleError(f"{bundle} has no model for {', '.join(runtimes)} (it has {have})")


def check_targets(app: str, targets: list[str]) -> list[str]:
    """Canonical export targets for ``app``; refuses (one line) a target the app cannot load."""
    _check_app(app)
    out = []
    for t in targets:
        target = _canonical_target(t)
        if target not in _app_targets(app):
            raise BundleError(
                f"--target {t}: the {app} app cannot load it; use {' and/or '.join(_app_targets(app))}"
            )
        if target not in out:
            out.append(target)
    return out


def export_artifacts(app: str, model: Any, specs: list[Any], calib: Any = None,
                     images: np.ndarray | None = None) -> list[Path]:
    """Export ``model`` once per spec (the ``hrvit-mobile export`` code path) for a bundle, parity on
    ``images`` (None: the exporter's synthetic ones); returns the artifact paths. Refuses a target the app
    cannot load before exporting anything."""
    import dataclasses

    from hrvit_mobile.exporters import check_dependencies, export, resolve

    check_targets(app, [s.target for s in specs])
    for spec in specs:
        resolve(spec)
        check_dependencies(spec.target)
    paths = []
    for spec in specs:
        report = export(model, dataclasses.replace(spec), calib, images)
        if not report.ok:
            reason = report.parity.reason if report.parity else ""
            raise BundleError(f"{report.artifact.path.name} failed parity ({reason}); not bundled")
        paths.append(report.artifact.path)
    return paths


def run_self_test(bundle: Path | str) -> dict[str, dict[str, Any]]:
    """Run each bundled model on the golden image in its Python runtime, as the apps do on the device:
    ``{model file: {"agreement": a, "passed": bool}}``."""
    from PIL import Image

    from hrvit_mobile.exporters import open_artifact
    from hrvit_mobile.metrics import upsample_class_map

    root = Path(bundle)
    manifest = verify_bundle(root)
    entry = manifest["self_test"]
    with Image.open(root / entry["image"]) as im:
        image = np.asarray(im.convert("RGB"))
    out = {}
    for model in manifest["models"]:
        logits = open_artifact(root / model["file"]).predict(image)[0]
        a = selftest.agreement(upsample_class_map(logits, tuple(entry["shape"]))[0], root, entry)
        out[model["file"]] = {"agreement": a, "passed": a >= entry["min_agreement"][model["file"]]}
    return out
