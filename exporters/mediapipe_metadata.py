"""TFLite model metadata for MediaPipe's Image Segmenter, written by mediapipe's own metadata writer.

``mediapipe.tasks.python.metadata.metadata_writers.image_segmenter`` writes the image input (with its
normalization), the segmentation output with its labels file and the segmenter options; the task API on
Android, iOS, the web and Python reads them. The .tflite's input is the RGB image as float32 0..255 and
mean/std live in the graph (the metadata's normalization cannot hold per-channel values that MediaPipe
accepts), so the metadata records mean 0 and std 1: MediaPipe feeds the pixel values as they are.

The mediapipe 1.2.2 and 1.2.3 wheels import the writer's parser-version helper from a compiled module
they no longer ship (``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``), so the writer
cannot be imported as is. Where that module is missing, :func:`segmenter_writer` puts
:func:`minimum_parser_version` (a port of mediapipe's ``metadata_version.cc``) in its place for the
import; everything else is mediapipe's code. Where the module exists, it is used.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import io
import sys
import types
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ExportError

# the module the writer imports but the wheels it was written for (mediapipe 1.2.2, 1.2.3) do not ship
VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
WRITTEN_FOR = ("1.2.2", "1.2.3")
WRITER = "mediapipe.tasks.python.metadata.metadata_writers.image_segmenter"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest: no build time in the artifact
SEGMENTER_ACTIVATION = "SOFTMAX"  # for confidence masks; the category mask is the argmax either way


def minimum_parser_version(metadata_buf: bytes) -> str:
    """The lowest metadata parser version that understands every field of ``metadata_buf``: the schema
    members added after 1.0.0 that it uses, as mediapipe's ``GetMinimumMetadataParserVersion`` counts."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(metadata_buf), 0))
    found = [(1, 0, 0)]

    def files(items: Any) -> None:
        for f in items or []:
            if f.type == fb.AssociatedFileType.VOCABULARY:
                found.append((1, 0, 1))
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                found.append((1, 4, 0))
            if f.version is not None:
                found.append((1, 4, 1))

    def units(items: Any) -> None:
        tokenizers = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                      fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                      fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
        for u in items or []:
            if u.optionsType in tokenizers:
                found.append(tokenizers[u.optionsType])

    def tensors(items: Any) -> None:
        for t in items or []:
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None and t.content.contentPropertiesType == audio:
                found.append((1, 3, 0))

    audio = fb.ContentProperties.AudioProperties
    for sg in md.subgraphMetadata or []:
        tensors(sg.inputTensorMetadata)
        tensors(sg.outputTensorMetadata)
        files(sg.associatedFiles)
        for field_value, version in ((sg.inputProcessUnits, (1, 1, 0)), (sg.outputProcessUnits, (1, 1, 0))):
            if field_value is not None:
                found.append(version)
                units(field_value)
        if sg.inputTensorGroups is not None or sg.outputTensorGroups is not None:
            found.append((1, 2, 0))
        if sg.customMetadata is not None:
            found.append((1, 5, 0))
    files(md.associatedFiles)
    return ".".join(str(v) for v in max(found))


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def segmenter_writer() -> tuple[types.ModuleType, dict[str, Any]]:
    """mediapipe's image segmenter metadata writer module, and what was used to import it."""
    try:
        from importlib.metadata import version

        mp_version = version("mediapipe")
    except Exception as e:
        raise ExportError(
            "the MediaPipe metadata of a .tflite is written with mediapipe's metadata writer: "
            "pip install 'hrvit-mobile[tflite]' (or mediapipe==1.2.2)"
        ) from e
    info: dict[str, Any] = {"writer": WRITER, "mediapipe": mp_version}
    stand_in_note = (
        f"{VERSION_MODULE}.GetMinimumMetadataParserVersion: hrvit_mobile.exporters.mediapipe_metadata."
        f"minimum_parser_version (the module is missing from the mediapipe {mp_version} wheel)"
    )
    if WRITER in sys.modules:  # imported before, by this function or otherwise: say what it uses
        loaded = sys.modules[WRITER.rsplit(".", 2)[0] + ".metadata"]._pywrap_metadata_version
        if loaded.GetMinimumMetadataParserVersion is minimum_parser_version:
            info["stand_in"] = stand_in_note
        return sys.modules[WRITER], info
    if _module_exists(VERSION_MODULE):
        return importlib.import_module(WRITER), info
    if mp_version not in WRITTEN_FOR:
        raise ExportError(
            f"mediapipe {mp_version} lacks {VERSION_MODULE}, which its metadata writer imports; "
            f"hrvit-mobile supplies it for mediapipe {' and '.join(WRITTEN_FOR)}: "
            "pip install mediapipe==1.2.2"
        )
    stand_in = types.ModuleType(VERSION_MODULE)
    stand_in.GetMinimumMetadataParserVersion = minimum_parser_version  # type: ignore[attr-defined]
    parents = [VERSION_MODULE.rsplit(".", i)[0] for i in (3, 2, 1)]  # mediapipe.tasks.cc, ... .python
    added = [name for name in [*parents, VERSION_MODULE] if name not in sys.modules]
    for name in parents:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[VERSION_MODULE] = stand_in
    try:
        module = importlib.import_module(WRITER)
    finally:  # the writer keeps its reference; nothing else should find the stand-in
        for name in added:
            sys.modules.pop(name, None)
    info["stand_in"] = stand_in_note
    return module, info


def write_segmenter_metadata(model: bytes, labels: Sequence[str]) -> tuple[bytes, dict[str, Any]]:
    """``model`` (.tflite bytes: one NHWC float32 0..255 RGB input, one NHWC logits output) with MediaPipe
    Image Segmenter metadata and its labels file; returns the new bytes and what was written."""
    image_segmenter, info = segmenter_writer()
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    failure = None
    with _quiet_half_built_writers():
        try:
            writer = image_segmenter.MetadataWriter.create(
                bytearray(model),
                input_norm_mean=[0.0],
                input_norm_std=[1.0],
                labels=metadata_writer.Labels().add(list(labels)),
                activation=getattr(image_segmenter.Activation, SEGMENTER_ACTIVATION),
            )
            data, _ = writer.populate()
            del writer  # its temporary folder is removed now, not by a finalizer at interpreter exit
        except OSError as exc:  # the writer's temporary model file did not fit (a full disk)
            failure = OSError(exc.errno, exc.strerror, exc.filename)
        if failure is not None:
            gc.collect()
            raise failure
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    data = bytes(data)
    md = fb.ModelMetadata.GetRootAsModelMetadata(metadata.get_metadata_buffer(data), 0)
    displayer = metadata.MetadataDisplayer.with_model_buffer(data)
    info.update({
        "metadata": "TFLITE_METADATA (image input, segmentation output, segmenter options)",
        "associated_files": displayer.get_packed_associated_file_list(),
        "input_normalization": {"mean": [0.0], "std": [1.0], "why": "mean/std are applied in the graph"},
        "activation": SEGMENTER_ACTIVATION,
        "min_parser_version": md.MinParserVersion().decode(),
    })
    return data, info



@contextlib.contextmanager
def _quiet_half_built_writers() -> Iterator[None]:
    """While the writer runs, drop the tracebacks the finalizers of writer objects that a failed write left
    half-built print: they look up attributes their constructors never set. Other unraisable errors pass."""
    stock = sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, AttributeError)
                and (getattr(unraisable.object, "__module__", None) or "").startswith("mediapipe.")):
            stock(unraisable)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = stock


def with_associated_files(model: bytes, written: bytes) -> bytes:
    """``model`` (a rewritten flatbuffer) with the associated files (the labels) of ``written`` (the
    writer's output) appended as the writer's populator appends them: a zip opened in append mode
    behind the flatbuffer, files stored uncompressed. MediaPipe reads the zip's offsets from the start
    of the file, so the zip is written anew rather than moved; with a fixed timestamp, so that the same
    model gives the same bytes."""
    out = io.BytesIO(model)
    with zipfile.ZipFile(io.BytesIO(written)) as src, zipfile.ZipFile(out, "a") as dst:
        for name in src.namelist():
            dst.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME), src.read(name))
    return out.getvalue()
