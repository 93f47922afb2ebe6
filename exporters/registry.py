"""The backend registry: one :class:`Backend` object per export target, declared in its own module.

A backend module (``executorch.py``, ``coreml.py``, ``litert.py``) ends with ``register(Backend(...))``:
its name and aliases, what it needs installed, its variants (``--bits``/``--activations`` -> variant,
quantization recipe and deploy layout), its convert/validate/runner functions and what a demo app
loads. The CLI's choices, ``export``, the bundle, the report and the plots ask this registry; none of
them keeps a table of targets. Adding a backend is one new module plus its line in
:data:`BACKEND_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrvit_mobile.deploy.options import DeployOptions

from .errors import UnsupportedExportError
from .spec import normalize_activations

# The modules that register the built-in backends, in the order the CLI, tables and plots list them.
BACKEND_MODULES: tuple[str, ...] = (
    "hrvit_mobile.exporters.executorch",
    "hrvit_mobile.exporters.coreml",
    "hrvit_mobile.exporters.litert",
)


@dataclass(frozen=True)
class Variant:
    """One (bits, activations) export of a backend and how it is made.

    ``default`` marks what ``--bits N`` means when ``--activations`` is not given. ``recipe`` builds the
    quantization recipe from the resolved spec (None: a float export). ``layout`` overrides the
    backend's deploy layout for this variant. ``calibrates``: the recipe needs calibration images.
    """

    name: str
    bits: int
    activations: str = "float"
    default: bool = True
    recipe: Callable[[Any], Any] | None = None
    layout: str | None = None
    calibrates: bool = False
    requirements: tuple[tuple[str, str], ...] = ()  # beyond the backend's own
    # the module the recipe quantizes, made from the deploy form (default: the deploy form itself)
    quantized_module: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Backend:
    """Everything the project knows about one export target.

    The callables are the backend module's own functions: ``convert(model, spec, calib)`` ->
    ``ArtifactResult``; ``validate(artifact, images, refs, thresholds)`` -> ``ParityResult``;
    ``open_runner(path, meta, threads)`` -> ``ArtifactRunner``; ``delegation(meta, path)`` -> one line
    on what runs in the accelerated backend plus its details.
    """

    name: str
    aliases: tuple[str, ...]
    extra: str  # the pip extra of hrvit-mobile that installs what it needs
    requirements: tuple[tuple[str, str], ...]  # (import name, pip requirement)
    runtime_package: str  # the distribution whose version names the runtime in reports
    variants: tuple[Variant, ...]
    layout: str  # the deploy layout its exporter lowers, as measured in its runtime
    app_file: str  # the model's file name inside a demo-app bundle
    apps: tuple[str, ...]  # the demo apps that load it
    color: str  # its colour in report plots
    convert: Callable[..., Any]
    validate: Callable[..., Any]
    open_runner: Callable[..., Any]
    delegation: Callable[[dict[str, Any], Path], tuple[str, dict[str, Any]]]
    verify_hint: str = ""  # where the artifact's own runtime runs, when not on every host
    app_entry: dict[str, str] = field(default_factory=dict)  # extra keys of its bundle manifest entry
    app_note: str = ""  # a paragraph for the bundle README, for the app developer
    # the deploy form's upsampler and norm form its runtime runs best (hrvit_mobile.deploy.DeployOptions)
    upsampler: str = "transposed_conv"
    norm: str = "delegable"
    # the class names a model file carries itself (None where it carries none)
    embedded_labels: Callable[[Path], list[str] | None] | None = None
    # (input shape, output shape) as a model file declares them; ImportError without its runtime package
    declared_io: Callable[[Path], tuple[list[int], list[int]]] | None = None

    @property
    def suffix(self) -> str:
        return Path(self.app_file).suffix

    def default_activations(self, bits: int) -> str:
        """What ``--bits`` alone means: the variant marked default for those bits, else float."""
        for v in self.variants:
            if v.bits == bits and v.default:
                return v.activations
        return "float"

    def variant(self, bits: int, activations: str | None = None) -> Variant:
        """The variant for ``--bits`` (and ``--activations``); one line naming the supported ones if none."""
        act = self.default_activations(bits) if activations is None else normalize_activations(activations)
        found = next((v for v in self.variants if (v.bits, v.activations) == (bits, act)), None)
        if found is None:
            wanted = f"--bits {bits}" + (" --activations 8" if act == "int8" else "")
            raise UnsupportedExportError(
                f"--target {self.name} {wanted} is not supported; supported: {self.name}: {self.describe()}"
            )
        return found

    def variant_named(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise UnsupportedExportError(
            f"{self.name} has no variant {name!r}; variants: {', '.join(v.name for v in self.variants)}"
        )

    def layout_for(self, variant: str, requested: str | None = None) -> str:
        """The deploy layout to lower ``variant`` in: ``requested`` (``--layout``) or the measured choice."""
        return requested or self.variant_named(variant).layout or self.layout

    def deploy_options(self, variant: str, requested_layout: str | None = None) -> DeployOptions:
        """The deploy form ``variant`` is lowered in: its layout (:meth:`layout_for`), upsampler and norm."""
        return DeployOptions(layout=self.layout_for(variant, requested_layout), upsampler=self.upsampler,
                             norm=self.norm)

    def describe(self) -> str:
        """e.g. ``32, 16, 8 (activations float), 8 --activations 8``"""
        items = []
        for v in self.variants:
            plain = v.activations == self.default_activations(v.bits)
            act = "8" if v.activations == "int8" else "float"
            items.append(str(v.bits) if plain else f"{v.bits} --activations {act}")
        return ", ".join(items)


_REGISTRY: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` under its name and aliases (called once, at the end of its module)."""
    for key in (backend.name, *backend.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != backend.name:
            raise ValueError(f"target name {key!r} is taken by {owner}")
    _REGISTRY[backend.name] = backend
    for key in (backend.name, *backend.aliases):
        _ALIASES[key] = backend.name
    return backend


def _load() -> None:
    if len(_REGISTRY) < len(BACKEND_MODULES):
        for module in BACKEND_MODULES:
            importlib.import_module(module)


def backends() -> tuple[Backend, ...]:
    """Every registered backend, in :data:`BACKEND_MODULES` order."""
    _load()
    order = {m: i for i, m in enumerate(BACKEND_MODULES)}
    return tuple(sorted(_REGISTRY.values(), key=lambda b: order.get(b.convert.__module__, len(order))))


def target_names() -> tuple[str, ...]:
    return tuple(b.name for b in backends())


def get_backend(target: str) -> Backend:
    """The backend for a target name or alias; one line naming the targets when unknown."""
    _load()
    name = _ALIASES.get(str(target).lower())
    if name is None:
        raise UnsupportedExportError(
            f"unknown target {target!r}; supported targets: {', '.join(target_names())} (or 'all')"
        )
    return _REGISTRY[name]


def all_variants() -> Iterator[tuple[Backend, Variant]]:
    for b in backends():
        for v in b.variants:
            yield b, v


def apps() -> dict[str, tuple[Backend, ...]]:
    """Demo app -> the backends whose artifacts it loads, from each backend's ``apps``."""
    out: dict[str, list[Backend]] = {}
    for b in backends():
        for app in b.apps:
            out.setdefault(app, []).append(b)
    return {app: tuple(bs) for app, bs in out.items()}
