"""Bad and hostile input through the CLI: one line naming what is wrong, exit 2, nothing written."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import hrvit_mobile
from hrvit_mobile.cli import main
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.files import OutputError, atomic_write, staging_dir
from hrvit_mobile.images import MAX_IMAGE_PIXELS, open_image
from hrvit_mobile.quant.qat import FORMAT as QAT_FORMAT

NANO = ["--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "7"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``hrvit-mobile argv`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, lines: list[str], *fragments: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("hrvit-mobile: error: "), lines
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


def test_export_refuses_a_checkpoint_with_nan_weights(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "diverged.pth"
    torch.save({"state_dict": _diverged_state()}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli(capsys, "export", "--target", "executorch", *NANO, "--checkpoint", ckpt,
                          "--out", out)
    assert_refused(code, lines, "NaN/inf weights in 2 of", "first: backbone.stem.conv1.weight")
    assert files_under(out) == []


def test_export_refuses_a_qat_checkpoint_with_nan_weights(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "last.pt"
    weights = {"conv.weight": torch.ones(2), "conv.bias": torch.tensor([0.0, float("nan")])}
    torch.save({"format": QAT_FORMAT, "config": {"target": "executorch"}, "step": 3, "model": weights}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli(capsys, "export", "--target", "executorch", "--bits", "8", "--checkpoint", ckpt,
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
def test_predict_refuses_an_image_whose_header_is_too_large(tiny_pte, tmp_path: Path, capsys, size) -> None:
    image = tmp_path / "huge.png"
    image.write_bytes(png_claiming(*size))
    out = tmp_path / "out"
    code, lines = run_cli(capsys, "predict", "--model", tiny_pte, "--image", image, "--out", out / "o.png")
    limit = f"at most {MAX_IMAGE_PIXELS:,} pixels (8192x8192)"
    assert_refused(code, lines, f"{image} is too large (", f"{size[0] * size[1]:,} pixels)", limit)
    if size != (20000, 20000):  # PIL's own refusal, beyond twice its limit, does not say the size
        assert f"({size[0]}x{size[1]} = " in lines[0]
    assert files_under(out) == []


def test_an_image_at_the_limit_opens(tmp_path: Path) -> None:
    image = tmp_path / "limit.png"
    image.write_bytes(png_claiming(8192, 8192))
    with open_image(image) as im:  # the header only: nothing decoded
        assert im.size == (8192, 8192)


# --------------------------------------------------------------------------------------------------
# output locations


def test_export_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "exports"
    out.write_text("a file\n")
    code, lines = run_cli(capsys, "export", "--target", "executorch", *NANO, "--out", out)
    assert_refused(code, lines, f"{out} exists and is a file: the output must be a folder")
    assert out.read_text() == "a file\n" and sorted(tmp_path.iterdir()) == [out]


def test_export_out_below_a_file(tmp_path: Path, capsys) -> None:
    parent = tmp_path / "notes.txt"
    parent.write_text("x")
    code, lines = run_cli(capsys, "export", "--target", "executorch", *NANO, "--out", parent / "exports")
    assert_refused(code, lines, f"{parent} is a file, so {parent / 'exports'} cannot be a folder")
    assert sorted(tmp_path.iterdir()) == [parent]


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
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    assert "Traceback" not in err
    assert list(out.iterdir()) == []  # no staging, no artifact, no sidecar


def test_the_next_export_removes_staging_of_a_killed_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "exports"
    proc = _export_process(out)
    staged = _wait_for_staging(proc, out)
    proc.kill()
    proc.communicate(timeout=60)  # reaped: the pid is no longer alive
    assert _staging(out) == staged  # SIGKILL leaves it behind
    # a live process's staging folder (a concurrent export) is left alone
    alive = out / f".other.staging-{os.getpid()}-x"
    alive.mkdir()
    code = main(["export", "--target", "executorch", *NANO, "--out", str(out), "--no-parity", "--no-report"])
    assert code == 0, capsys.readouterr().err
    assert _staging(out) == [alive]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "hrvit_nano_64x64_executorch_fp32.pte", "hrvit_nano_64x64_executorch_fp32.pte.json"]
