"""The choices that pick the deploy form's layers, in one place.

Every deploy form computes the same network; these options choose how (see docs/deploy-form.md):
the layout the attention branches run in, the form of the fusion paths' nearest upsampler, the form of
the token-layout LayerNorms, and which DES shortcuts stay Kronecker-factored. Each backend's variant
supplies the options its runtime runs best (``hrvit_mobile.exporters.registry``); QAT checkpoints store
the options their graph was trained in (:meth:`DeployOptions.as_dict`, :meth:`DeployOptions.from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hrvit_mobile.deploy.fold import UPSAMPLERS
from hrvit_mobile.deploy.layout import LAYOUTS

# DES maps of at least this many channels stay Kronecker-factored in the deploy form; narrower ones
# become two dense linears. On b1 at 512x512 factoring the 128- and 256-channel maps (24 of 35 blocks)
# shrinks every artifact by ~12 % at about the same latency, while the 32- and 64-channel maps are cheap
# dense (2 * C^2 weights) and 2-4x slower factored in XNNPACK, where the two transposes cost more than
# the saved MACs. Figures and commands: README, "The deploy form"; benchmarks/des_form.py.
FACTORED_DES_MIN_CHANNELS = 128

# "delegable": mean-row linears every delegate takes; "native": one F.layer_norm (for runtimes with a
# LayerNorm op of their own: Core ML). Channels-first norms always take their 1x1-conv form.
NORMS = ("delegable", "native")


@dataclass(frozen=True)
class DeployOptions:
    """Which layers the deploy form is built from; the defaults are the form every consumer takes."""

    layout: str = "tokens"  # hrvit_mobile.deploy.layout.LAYOUTS
    upsampler: str = "transposed_conv"  # hrvit_mobile.deploy.fold.UPSAMPLERS
    norm: str = "delegable"  # NORMS
    # DES shortcuts of at least this many channels stay factored; None: every one dense
    factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS

    def __post_init__(self) -> None:
        choices = (("layout", self.layout, LAYOUTS), ("upsampler", self.upsampler, UPSAMPLERS),
                   ("norm", self.norm, NORMS))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"unknown deploy {name} {value!r}; allowed: {', '.join(allowed)}")
        if self.factored_des_from is not None and self.factored_des_from < 0:
            raise ValueError(f"factored_des_from must be >= 0 or None, got {self.factored_des_from}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for a QAT checkpoint's record."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeployOptions:
        """Options from :meth:`as_dict`'s values; keys it does not know are an error, missing ones default."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown deploy option(s) {', '.join(sorted(unknown))}")
        return cls(**values)
