"""Bad and hostile input through the CLI: one line naming what is wrong, exit 2, nothing written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import hrvit_mobile
from hrvit_mobile.bundle import MANIFEST, build_bundle
from hrvit_mobile.cli import main
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.files import OutputError, atomic_write, commit, staging_dir
from hrvit_mobile.images import MAX_IMAGE_PIXELS, open_image
from hrvit_mobile.quant.qat import FORMAT as QAT_FORMAT
from hrvit_mobile.sizes import SIZE_MULTIPLE

# cheap properties: every example is refused before a model is built, or runs a 64x64 artifact
# (no example database: nothing written into the checkout)
CHEAP = settings(max_examples=25, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

NANO = ["--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "7"]


def run_cli(*argv: object) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``hrvit-mobile argv`` run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    return code, err.getvalue().strip().splitlines()


def assert_refused(code: int, lines: list[str], *fragments: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert re.match(r"hrvit-mobile( [a-z]+)?: error: \S", lines[0]), lines
    for fragment in fragments:
        assert fragment in lines[0], lines


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# checkpoints


def _diverged_state() -> dict[str, torch.Tensor]:
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=7, img_size=(64, 64))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.stem.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["decode_head.conv_seg.weight"][1] = float("inf")
    return state


def test_export_refuses_a_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "diverged.pth"
    torch.save({"state_dict": _diverged_state()}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--checkpoint", ckpt,
                          "--out", out)
    assert_refused(code, lines, "NaN/inf weights in 2 of", "first: backbone.stem.conv1.weight")
    assert files_under(out) == []


def test_export_refuses_a_qat_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.pt"
    weights = {"conv.weight": torch.ones(2), "conv.bias": torch.tensor([0.0, float("nan")])}
    torch.save({"format": QAT_FORMAT, "config": {"target": "executorch"}, "step": 3, "model": weights}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", "--bits", "8", "--checkpoint", ckpt,
                          "--out", out)
    assert_refused(code, lines, "NaN/inf weights in 1 of 2 tensors (first: conv.bias)")
    assert files_under(out) == []


# --------------------------------------------------------------------------------------------------
# images through predict


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ExecuTorch artifact (TinySegmenter, 64x64, 5 classes) for predict."""
    out = tmp_path_factory.mktemp("tiny-pte")
    spec = ExportSpec(target="executorch", bits=32, img_size=(64, 64), num_classes=5, out_dir=out,
                      model_name="tiny", run_parity=False)
    return export(TinySegmenter(num_classes=5), spec).artifact.path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000), (8193, 8192)],
                         ids=["beyond-pil-error", "beyond-pil-warning", "just-over"])
def test_predict_refuses_an_image_whose_header_is_too_large(tiny_pte, tmp_path: Path, size) -> None:
    image = tmp_path / "huge.png"
    image.write_bytes(png_claiming(*size))
    out = tmp_path / "out"
    code, lines = run_cli("predict", "--model", tiny_pte, "--image", image, "--out", out / "o.png")
    limit = f"at most {MAX_IMAGE_PIXELS:,} pixels (8192x8192)"
    assert_refused(code, lines, f"{image} is too large (", f"{size[0] * size[1]:,} pixels)", limit)
    if size != (20000, 20000):  # PIL's own refusal, beyond twice its limit, does not say the size
        assert f"({size[0]}x{size[1]} = " in lines[0]
    assert files_under(out) == []


def test_predict_help_states_the_pixel_limit(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"({MAX_IMAGE_PIXELS:,}) pixels" in " ".join(capsys.readouterr().out.split())


def test_an_image_at_the_limit_opens(tmp_path: Path) -> None:
    image = tmp_path / "limit.png"
    image.write_bytes(png_claiming(8192, 8192))
    with open_image(image) as im:  # the header only: nothing decoded
        assert im.size == (8192, 8192)


# --------------------------------------------------------------------------------------------------
# output locations


def test_export_out_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    out.write_text("a file\n")
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--out", out)
    assert_refused(code, lines, f"{out} exists and is a file: the output must be a folder")
    assert out.read_text() == "a file\n" and sorted(tmp_path.iterdir()) == [out]


def test_export_out_below_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "notes.txt"
    parent.write_text("x")
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--out", parent / "exports")
    assert_refused(code, lines, f"{parent} is a file, so {parent / 'exports'} cannot be a folder")
    assert sorted(tmp_path.iterdir()) == [parent]


@pytest.mark.parametrize("argv", [
    ["data", "synthetic", "--train", "1", "--val", "1", "--img-size", "64"],
    ["train", "--data", "DATA", "--model", "hrvit_nano", "--steps", "1", "--img-size", "64"],
    ["qat", "--data", "DATA", "--target", "executorch", "--steps", "1", "--model", "hrvit_nano"],
    ["bench", "--model", "hrvit_nano", "--img-size", "64", "--targets", "executorch"],
    ["predict", "--model", "MODEL", "--image", "IMAGE"],
], ids=lambda argv: argv[0])
def test_every_command_refuses_an_output_below_a_file_first(tmp_path: Path, argv: list[str]) -> None:
    """Refused before any data is read, model built or step trained: the inputs named do not even exist."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / ("out.png" if argv[0] == "predict" else "out")
    code, lines = run_cli(*argv, "--out", out)
    assert_refused(code, lines, f"{blocker} ")
    assert sorted(tmp_path.iterdir()) == [blocker]


def test_staging_into_a_file_is_one_line_for_the_api_too(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(OutputError, match="exists and is a file"), staging_dir(target, "model"):
        pass
    with pytest.raises(OutputError, match="exists and is a file"):
        atomic_write(target / "model.json", "{}")
    with pytest.raises(OutputError, match="is a file, so"):
        atomic_write(target / "sub" / "model.json", "{}")


# --------------------------------------------------------------------------------------------------
# exports stopped midway


def _export_process(out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "hrvit_mobile.cli", "export", "--target", "executorch", *NANO,
            "--out", str(out), "--no-parity", "--no-report", *extra]
    # Ctrl-C as in a terminal: a suite started as a background job inherits SIGINT ignored, and so would
    # the export, which Python then leaves ignored
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _staging(out: Path) -> list[Path]:
    return sorted(out.glob(".*.staging-*")) if out.exists() else []


def _wait_for_staging(proc: subprocess.Popen, out: Path, timeout: float = 300) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if found := _staging(out):
            return found
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no staging folder appeared in {out}: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_export_removes_its_staging(tmp_path: Path, sig) -> None:
    out = tmp_path / "exports"
    proc = _export_process(out)
    staged = _wait_for_staging(proc, out)
    assert f".staging-{proc.pid}-" in staged[0].name  # the owner's pid is in the name
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM), err
    said = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert _error_lines(err) == [f"hrvit-mobile: {said}"]
    assert list(out.iterdir()) == []  # no staging, no artifact, no sidecar


def test_the_next_export_removes_staging_of_a_killed_one(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    proc = _export_process(out)
    staged = _wait_for_staging(proc, out)
    proc.kill()
    proc.communicate(timeout=60)  # reaped: the pid is no longer alive
    assert _staging(out) == staged  # SIGKILL leaves it behind
    # a live process's staging folder (a concurrent export) is left alone
    alive = out / f".other.staging-{os.getpid()}-x"
    alive.mkdir()
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--out", out, "--no-parity",
                          "--no-report")
    assert code == 0, lines
    assert any(f"removed {staged[0]}, left by process {proc.pid}" in line for line in lines), lines
    assert _staging(out) == [alive]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "hrvit_nano_64x64_executorch_fp32.pte", "hrvit_nano_64x64_executorch_fp32.pte.json"]


# --------------------------------------------------------------------------------------------------
# properties over the CLI's arguments: refused in one line, exit 2, nothing written

_SIZE_TEXT = re.compile(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*")


def _size_is_valid(text: str) -> bool:
    found = _SIZE_TEXT.fullmatch(text)
    return bool(found) and all(int(g or found.group(1)) % SIZE_MULTIPLE == 0 and int(g or found.group(1)) > 0
                               for g in found.groups())


_bad_dimension = st.integers(-10**6, 10**6).filter(lambda n: n <= 0 or n % SIZE_MULTIPLE)
_good_dimension = st.integers(1, 64).map(lambda n: n * SIZE_MULTIPLE)
bad_img_sizes = st.one_of(
    _bad_dimension.map(str),
    st.tuples(_bad_dimension, _good_dimension).map(lambda t: f"{t[0]}x{t[1]}"),
    st.tuples(_good_dimension, _bad_dimension).map(lambda t: f"{t[0]}x{t[1]}"),
    st.text(max_size=12),
).filter(lambda text: not _size_is_valid(text))


@CHEAP
@given(size=bad_img_sizes)
def test_bad_img_size_is_one_line(tmp_path: Path, size: str) -> None:
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", "--model", "hrvit_nano", f"--img-size={size}",
                          "--out", out)
    assert_refused(code, lines)
    assert not out.exists()


def _subcommands(parser, prefix: tuple[str, ...] = ()):
    """(words, parser) of every subcommand, nested ones (``data synthetic``) included."""
    for action in parser._actions:
        if isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def _commands_taking(option: str) -> dict[str, list[str]]:
    """Every subcommand with ``option``, and the arguments it requires (the first choice, an int, a name)."""
    from hrvit_mobile.cli import build_parser

    out = {}
    for words, command in _subcommands(build_parser()):
        if option not in command._option_string_actions:
            continue
        argv = []
        for action in command._actions:
            if action.required or (not action.option_strings and action.nargs != 0):
                value = (str(next(iter(action.choices))) if action.choices else "1" if action.type is int
                         else f"missing-{action.dest}")
                argv += [action.option_strings[0], value] if action.option_strings else [value]
        if words == ("bundle",):  # --img-size applies when the bundle exports
            argv += ["--app", "android", "--target", "executorch"]
        out[" ".join(words)] = argv
    return out


@pytest.mark.parametrize("command", sorted(_commands_taking("--img-size")))
@pytest.mark.parametrize("size", ["2080x64", "64x4096", "51200"])
def test_img_size_above_the_limit_is_one_line(tmp_path: Path, command: str, size: str) -> None:
    argv = _commands_taking("--img-size")[command]
    out = tmp_path / "out"
    if command in _commands_taking("--out"):
        argv = [*argv, "--out", str(out)]
    code, lines = run_cli(*command.split(), *argv, "--img-size", size)
    h, _, w = size.partition("x")
    assert_refused(code, lines, f"--img-size {h}x{w or h} is too large: at most 2048 on a side")
    assert not out.exists()


def test_crop_above_the_limit_is_one_line(tmp_path: Path) -> None:
    code, lines = run_cli("train", "--data", tmp_path, "--img-size", "64", "--crop", "4096", "--out",
                          tmp_path / "out")
    assert_refused(code, lines, "--crop 4096x4096 is too large: at most 2048 on a side")


def test_img_size_at_the_limit_is_taken() -> None:
    from hrvit_mobile.cli import _size

    assert _size("2048x1024") == (2048, 1024)


@CHEAP
@given(bits=st.one_of(st.integers().filter(lambda b: b not in (32, 16, 8, 6, 4)).map(str),
                      st.text(max_size=6).filter(lambda t: t.strip() not in ("32", "16", "8", "6", "4"))))
def test_bad_bits_is_one_line(tmp_path: Path, bits: str) -> None:
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", *NANO, f"--bits={bits}", "--out", out)
    assert_refused(code, lines, "--bits")
    assert not out.exists()


@CHEAP
@given(target=st.text(max_size=12).filter(lambda t: t not in ("executorch", "coreml", "tflite", "all")))
def test_bad_target_is_one_line(tmp_path: Path, target: str) -> None:
    out = tmp_path / "exports"
    code, lines = run_cli("export", f"--target={target}", *NANO, "--out", out)
    assert_refused(code, lines, "--target")
    assert not out.exists()


@CHEAP
@given(content=st.binary(max_size=256), suffix=st.sampled_from([".pth", ".pt", ".safetensors", ".bin"]))
def test_a_checkpoint_of_arbitrary_bytes_is_one_line(tmp_path: Path, content: bytes, suffix: str) -> None:
    ckpt = tmp_path / f"weights{suffix}"
    ckpt.write_bytes(content)
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--checkpoint", ckpt, "--out", out)
    assert_refused(code, lines, str(ckpt))
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "folder", "below-a-file"])
@pytest.mark.parametrize("option", ["--checkpoint", "--calib"])
def test_bad_input_paths_are_one_line(tmp_path: Path, option: str, kind: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    path = {"missing": tmp_path / "nope", "folder": tmp_path / "folder",
            "below-a-file": tmp_path / "file.txt" / "x"}[kind]
    if option == "--calib" and kind == "folder":
        path = tmp_path / "folder"  # an empty folder: no calibration images
    out = tmp_path / "exports"
    code, lines = run_cli("export", "--target", "executorch", *NANO, "--bits", "8", option, path,
                          "--out", out)
    assert_refused(code, lines, str(path))
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# properties over image files through predict: each one predicts, or is refused in one line


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, frames: int, orientation: int,
                 seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(frames):
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        if mode == "I;16":
            wide = rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
            pictures.append(Image.fromarray(wide))  # 16 bits per pixel
        elif mode == "P":
            pictures.append(rgb.quantize(colors=16))
        else:
            pictures.append(rgb.convert(mode))
    buf = io.BytesIO()
    extra: dict = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif
    if frames > 1:
        extra.update(save_all=True, append_images=pictures[1:], duration=40, loop=0)
    pictures[0].save(buf, format=fmt, **extra)
    return buf.getvalue()


# (format, modes it stores)
_FORMATS = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["L", "RGB", "RGBA", "CMYK", "I;16"],
}


@st.composite
def image_files(draw) -> tuple[bytes, str, tuple[int, int]]:
    """(file bytes, suffix, the size predict sees: after the EXIF orientation)."""
    fmt = draw(st.sampled_from(sorted(_FORMATS)))
    mode = draw(st.sampled_from(_FORMATS[fmt]))
    size = (draw(st.integers(1, 96)), draw(st.integers(1, 96)))
    frames = draw(st.integers(1, 3)) if fmt in ("GIF", "PNG", "WEBP") else 1
    orientation = draw(st.integers(1, 8)) if fmt in ("JPEG", "PNG", "WEBP") else 1
    data = _image_bytes(mode, size, fmt, frames, orientation, draw(st.integers(0, 2**16)))
    seen = size[::-1] if orientation >= 5 else size  # 5..8 turn the picture by 90 degrees
    return data, "." + fmt.lower(), seen


@CHEAP
@given(image=image_files())
def test_predict_takes_any_decodable_image(tiny_pte, tmp_path: Path, image) -> None:
    data, suffix, seen = image
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(data)
    out = tmp_path / "out" / "overlay.png"
    code, lines = run_cli("predict", "--model", tiny_pte, "--image", path, "--out", out)
    assert code == 0, lines
    with Image.open(out) as overlay, Image.open(out.with_name("overlay_classes.png")) as classes:
        assert overlay.size == seen and classes.size == seen
        assert overlay.mode == "RGB" and classes.mode == "P"


@CHEAP
@given(image=image_files(), cut=st.floats(0.0, 0.95))
def test_predict_on_a_truncated_image_is_one_line(tiny_pte, tmp_path: Path, image, cut: float) -> None:
    data, suffix, _ = image
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * cut)])
    out = tmp_path / f"out{time.monotonic_ns()}" / "overlay.png"  # one folder per example
    code, lines = run_cli("predict", "--model", tiny_pte, "--image", path, "--out", out)
    if code == 0:  # the cut fell where the decoder does not look (trailing metadata, later frames)
        assert out.is_file() and out.with_name("overlay_classes.png").is_file()
    else:
        assert_refused(code, lines, str(path))
        assert files_under(out.parent) == []


# --------------------------------------------------------------------------------------------------
# two writers at once, read-only and full output folders


def _commit_many(args: tuple[str, int]) -> None:
    """Stage a folder of files that all carry ``writer``'s tag, commit it onto ``final``; 20 times."""
    final, writer = Path(args[0]), args[1]
    for round_ in range(20):
        with staging_dir(final.parent, final.name) as stage:
            folder = stage / "package"
            folder.mkdir()
            for i in range(5):
                (folder / f"part{i}.bin").write_bytes(f"{writer}:{round_}".encode() * 1000)
            commit(folder, final)


def test_folders_committed_by_concurrent_writers_are_always_whole(tmp_path: Path) -> None:
    import multiprocessing

    final = tmp_path / "model.mlpackage"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pool.map(_commit_many, [(str(final), w) for w in range(3)])
    contents = {p.read_bytes() for p in final.iterdir()}
    assert len(contents) == 1 and len(list(final.iterdir())) == 5  # one writer's round, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]  # nothing staged or swapped


def test_two_exports_of_the_same_artifact_at_once(tmp_path: Path) -> None:
    """Both finish; the artifact is whole and matches the sidecar's hash (exports are deterministic, so
    whichever committed last wrote the same bytes); nothing staged is left."""
    out = tmp_path / "exports"
    procs = [_export_process(out) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    artifact = out / "hrvit_nano_64x64_executorch_fp32.pte"
    sidecar = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert [f["sha256"] for f in sidecar["files"] if f["path"] == artifact.name] == [digest]
    assert sorted(p.name for p in out.iterdir()) == [artifact.name, artifact.name + ".json"]


def _privileges_dropped() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _cli_process(argv: list[str], prefix: list[str] = (), file_size_limit: int | None = None):
    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([*prefix, sys.executable, "-m", "hrvit_mobile.cli", *argv], capture_output=True,
                          text=True, timeout=600, preexec_fn=limit)


def _error_lines(stderr: str) -> list[str]:
    """The CLI's own error lines; a traceback fails the test (stderr also holds logs and library warnings)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("hrvit-mobile")]


def test_export_into_a_read_only_folder(tmp_path: Path) -> None:
    out = tmp_path / "exports"
    out.mkdir()
    out.chmod(0o555)
    try:
        argv = ["export", "--target", "executorch", *NANO, "--out", str(out)]
        run = _cli_process(argv, _privileges_dropped())
    finally:
        out.chmod(0o755)
    assert run.returncode == 2, run.stderr
    assert _error_lines(run.stderr) == [f"hrvit-mobile: error: {out} is not writable: choose a writable "
                                        "output folder"]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("target", ["executorch", "tflite", "coreml"])
def test_export_into_a_full_disk(tmp_path: Path, target: str) -> None:
    """RLIMIT_FSIZE stands for a full disk: the 1.6 MB artifact cannot be written (EFBIG)."""
    require_module({"executorch": "executorch.runtime", "tflite": "litert_torch",
                    "coreml": "coremltools"}[target])
    out = tmp_path / "exports"
    run = _cli_process(["export", "--target", target, *NANO, "--out", str(out), "--no-parity",
                        "--no-report"], file_size_limit=256 * 1024)
    assert run.returncode == 2, run.stderr
    lines = _error_lines(run.stderr)
    # coremltools' weight writer reports a failed write without its errno, so that line names both causes
    reason = "coremltools could not write" if target == "coreml" else "file size limit exceeded"
    expected = f"hrvit-mobile: error: cannot write into {out}: {reason}"
    assert len(lines) == 1 and lines[0].startswith(expected), run.stderr
    assert "nothing was written" in lines[0]
    assert list(out.iterdir()) == []


def test_bundle_onto_a_full_disk(tiny_pte, tmp_path: Path) -> None:
    """The 34 kB .pte does not fit under a 16 kB file size limit: no bundle, no staging left."""
    out = tmp_path / "bundles"
    run = _cli_process(["bundle", "--app", "ios", "--artifact", str(tiny_pte), "--out", str(out / "app")],
                       file_size_limit=16 * 1024)
    assert run.returncode == 2, run.stderr
    lines = _error_lines(run.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"hrvit-mobile: error: cannot write into {out}: file size "
                                                   "limit exceeded; nothing was written"), run.stderr
    assert files_under(out) == []


def test_predict_onto_a_full_disk_leaves_neither_picture(tiny_pte, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image)  # its overlay PNG does not compress below the limit
    out = tmp_path / "out"
    run = _cli_process(["predict", "--model", str(tiny_pte), "--image", str(image), "--out",
                        str(out / "overlay.png")], file_size_limit=64 * 1024)
    assert run.returncode == 2, run.stderr
    lines = _error_lines(run.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"hrvit-mobile: error: cannot write into {out}: file size")
    assert files_under(out) == []


# --------------------------------------------------------------------------------------------------
# bundles with tampered, missing or extra files


@pytest.fixture(scope="module")
def tiny_bundle(tiny_pte, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle("ios", [tiny_pte], tmp_path_factory.mktemp("bundle") / "app").path


def _listed(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def test_the_untouched_bundle_verifies(tiny_bundle) -> None:
    code, lines = run_cli("bundle", "--verify", tiny_bundle)
    assert code == 0 and lines == [], lines


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def tampering(draw):
    """(what, file index or name, position fraction, byte) describing one change to a bundle."""
    kind = draw(st.sampled_from(["flip", "truncate", "delete", "extra", "manifest", "manifest-field",
                                 "symlink-out"]))
    name = draw(st.text("abcxyz._-", min_size=1, max_size=12))
    return (kind, draw(st.integers(0, 10**6)), draw(st.floats(0, 1, exclude_max=True)),
            draw(st.integers(1, 255)), draw(_json_values), name)


@settings(CHEAP, max_examples=30)
@given(change=tampering())
def test_a_tampered_bundle_fails_verification_in_one_line(tiny_bundle, tmp_path: Path, change) -> None:
    kind, index, where, xor, value, name = change
    bundle = tmp_path / f"b{time.monotonic_ns()}"
    shutil.copytree(tiny_bundle, bundle)
    files = _listed(bundle)
    victim = bundle / files[index % len(files)]
    manifest = bundle / MANIFEST
    if kind == "flip":
        data = bytearray(victim.read_bytes())
        data[int(where * len(data))] ^= xor
        victim.write_bytes(bytes(data))
    elif kind == "truncate":
        victim.write_bytes(victim.read_bytes()[: int(where * victim.stat().st_size)])
    elif kind == "delete":
        (manifest if index % (len(files) + 1) == len(files) else victim).unlink()
    elif kind == "extra":
        extra = victim.parent / f"{name}.extra"
        extra.write_bytes(b"not listed")
    elif kind == "manifest":
        manifest.write_text(json.dumps(value))
    elif kind == "manifest-field":  # a well-formed manifest with one field replaced by anything
        doc = json.loads(manifest.read_text())
        doc[sorted(doc)[index % len(doc)]] = value
        manifest.write_text(json.dumps(doc))
        # a field that holds nothing the verifier checks may pass; a mismatch is one line per field
        code, lines = run_cli("bundle", "--verify", bundle)
        assert code == 0 or (code == 2 and lines), lines
        assert all(re.match(r"hrvit-mobile: error: \S", line) for line in lines), lines
        return
    else:
        (victim.parent / f"{name}.link").symlink_to(tmp_path.parent)
    code, lines = run_cli("bundle", "--verify", bundle)
    assert_refused(code, lines)


def _edit_manifest(bundle: Path, edit) -> None:
    doc = json.loads((bundle / MANIFEST).read_text())
    edit(doc)
    (bundle / MANIFEST).write_text(json.dumps(doc))


@pytest.mark.parametrize(("field", "edit", "line"), [
    ("img_size", lambda d: d.update(img_size=[32, 64]),
     "img_size is [32, 64], but model.pte has [64, 64]"),
    ("input", lambda d: d["input"].update(shape=[1, 3, 64, 32]),
     "input.shape is [1, 3, 64, 32], but model.pte has [1, 3, 64, 64]"),
    ("output", lambda d: d["output"].update(shape=[1, 5, 32, 32]),
     "output.shape is [1, 5, 32, 32], but model.pte has [1, 5, 16, 16]"),
    ("model", lambda d: d.update(model="hrvit_b1"), "model is 'hrvit_b1', but model.pte.json has 'tiny'"),
    ("bits", lambda d: d["models"][0].update(bits=8), "models[0].bits is 8, but model.pte.json has 32"),
    ("size", lambda d: d["models"][0].update(size_bytes=1), "models[0].size_bytes is 1, but model.pte has "),
    ("model input", lambda d: d["models"][0]["input"].update(shape=[1, 3, 32, 32]),
     "models[0].input.shape is [1, 3, 32, 32], but model.pte has [1, 3, 64, 64]"),
])
def test_a_manifest_field_that_disagrees_with_the_model_is_named(tiny_bundle, tmp_path: Path, field, edit,
                                                                  line) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    _edit_manifest(bundle, edit)
    code, lines = run_cli("bundle", "--verify", bundle)
    assert code == 2 and any(line in x for x in lines), lines
    assert all(x.startswith("hrvit-mobile: error: model_info.json ") for x in lines), lines


def test_every_mismatch_is_its_own_line(tiny_bundle, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    _edit_manifest(bundle, lambda d: (d.update(img_size=[32, 32]), d["models"][0].update(bits=4)))
    code, lines = run_cli("bundle", "--verify", bundle)
    assert code == 2 and lines == [
        "hrvit-mobile: error: model_info.json models[0].bits is 4, but model.pte.json has 32",
        "hrvit-mobile: error: model_info.json img_size is [32, 32], but model.pte has [64, 64]",
    ]


def test_a_swapped_model_with_rewritten_hashes_is_named(tiny_bundle, tmp_path: Path) -> None:
    """Another model's .pte put in with the manifest's hashes updated: its own shapes give it away."""
    from hrvit_mobile.exporters.artifacts import sha256_file

    other = export(TinySegmenter(num_classes=5), ExportSpec(
        target="executorch", bits=32, img_size=(32, 32), num_classes=5, out_dir=tmp_path / "other",
        model_name="tiny", run_parity=False)).artifact.path
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    shutil.copy(other, bundle / "model.pte")

    def rehash(doc: dict) -> None:
        for f in doc["files"]:
            if f["path"] == "model.pte":
                f["sha256"], f["size_bytes"] = sha256_file(bundle / "model.pte"), other.stat().st_size
        doc["models"][0]["size_bytes"] = other.stat().st_size

    _edit_manifest(bundle, rehash)
    code, lines = run_cli("bundle", "--verify", bundle)
    assert code == 2 and "hrvit-mobile: error: model_info.json img_size is [64, 64], but model.pte has " \
        "[32, 32]" in lines, lines

    (bundle / "model.pte").write_bytes(b"not a program" * 100)  # no runtime reads it
    other = bundle / "model.pte"
    _edit_manifest(bundle, rehash)
    code, lines = run_cli("bundle", "--verify", bundle)
    assert code == 2 and any("models[0].file: the executorch runtime cannot read model.pte" in x
                             for x in lines), lines


# --------------------------------------------------------------------------------------------------
# training and QAT runs killed outright, then resumed


def _kill_after_a_random_step_and_resume(command, out: Path, read_checkpoint, steps: int) -> dict:
    """Run ``command(out)``, SIGKILL it (no chance to save) once its checkpoint holds a random step in
    the first half, then ``command(out, "--resume")`` to the end; returns the final checkpoint."""
    import random

    kill_after = random.randint(1, steps // 2)
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(Exception):  # not written yet
            if read_checkpoint(out / "last.pt")["step"] >= kill_after:
                break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert read_checkpoint(out / "last.pt")["step"] < steps, "the run ended before it was killed"
    resumed = subprocess.run(command(out, "--resume"), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert _staging(out) == []
    return read_checkpoint(out / "last.pt")


def _assert_same_run(a: dict, b: dict, steps: int) -> None:
    """Same step, the same bytes of every weight and optimizer state, the same losses."""
    assert a["step"] == b["step"] == steps
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in b["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert different == [], f"{len(different)} tensors differ, first {different[:3]}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_training_killed_at_a_random_step_resumes_bit_identical(tmp_path: Path) -> None:
    """Random resize, crop, flip and colour on every sample: a resumed run draws the same ones."""
    from hrvit_mobile.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "data", 4, 1, (64, 64), 0, progress=False)
    steps = 12

    def train(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "hrvit_mobile.cli", "train", "--data", str(data), "--model",
                "hrvit_nano", "--img-size", "64x64", "--crop", "32x32", "--steps", str(steps), "--batch-size",
                "3", "--warmup", "2", "--eval-every", "1", "--eval-samples", "1", "--threads", "1", "--out",
                str(out), *extra]

    def read(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    whole = subprocess.run(train(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr
    resumed = _kill_after_a_random_step_and_resume(train, tmp_path / "killed", read, steps)
    _assert_same_run(resumed, read(tmp_path / "whole" / "last.pt"), steps)


@pytest.mark.slow
def test_qat_killed_at_a_random_step_resumes_bit_identical(tmp_path: Path) -> None:
    """As training: ``--resume`` continues from the last checkpoint and ends with the same bytes of
    weights, observer state and optimizer state as an uninterrupted run."""
    from hrvit_mobile.data.synthetic import write_synthetic
    from hrvit_mobile.quant.qat import load_qat_checkpoint

    data = write_synthetic(tmp_path / "data", 2, 2, (64, 64), 0, progress=False)
    steps = 4

    def qat(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "hrvit_mobile.cli", "qat", "--data", str(data), "--target",
                "executorch", "--model", "hrvit_nano", "--img-size", "64", "--steps", str(steps),
                "--batch-size", "1", "--save-every", "1", "--eval-limit", "1", "--out", str(out), *extra]

    whole = subprocess.run(qat(tmp_path / "whole"), capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr
    resumed = _kill_after_a_random_step_and_resume(qat, tmp_path / "killed", load_qat_checkpoint, steps)
    _assert_same_run(resumed, load_qat_checkpoint(tmp_path / "whole" / "last.pt"), steps)
