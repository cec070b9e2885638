"""The catalogue of GPU models and regions that market specs are checked against.

A market is a spec string, and any spec hashes to some market id, so a typo (`gpu=nvidia-h10`)
would silently open a new, empty market. Specs typed by people (the CLI, SDL files, the
matcher's `spec` field) are checked here first, with a "did you mean" for near misses. Market ids
themselves stay a pure function of the canonical spec (`markets.market_id`): a model added here
later hashes to the same id it always had.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from underbid.protocol.markets import MarketSpecError, canonical_spec


@dataclass(frozen=True)
class GpuModel:
    """One GPU model: `vendor-model` as written in specs, and the memory sizes it is sold with."""

    vendor: str
    model: str
    vram_gb: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.vendor}-{self.model}"

    @property
    def label(self) -> str:
        return self.model.upper()


GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("nvidia", "b200", (192,)),
    GpuModel("nvidia", "h200", (141,)),
    GpuModel("nvidia", "gh200", (96, 144)),
    GpuModel("nvidia", "h100", (80, 94)),
    GpuModel("nvidia", "a100", (40, 80)),
    GpuModel("nvidia", "l40s", (48,)),
    GpuModel("nvidia", "l40", (48,)),
    GpuModel("nvidia", "l4", (24,)),
    GpuModel("nvidia", "a10", (24,)),
    GpuModel("nvidia", "a40", (48,)),
    GpuModel("nvidia", "a6000", (48,)),
    GpuModel("nvidia", "rtx6000ada", (48,)),
    GpuModel("nvidia", "rtx4090", (24,)),
    GpuModel("nvidia", "rtx3090", (24,)),
    GpuModel("nvidia", "v100", (16, 32)),
    GpuModel("nvidia", "t4", (16,)),
    GpuModel("amd", "mi300x", (192,)),
    GpuModel("amd", "mi250", (128,)),
)
#: Regions a provider can declare; `any` is a spec without a region.
REGIONS: tuple[str, ...] = ("us-east", "us-west", "eu-west", "eu-central", "ap-south", "ap-east", "sa-east", "any")

_BY_NAME = {model.name: model for model in GPU_MODELS}


def gpu_model(name: str) -> GpuModel:
    """The catalogue entry for `vendor-model`; MarketSpecError with a "did you mean" otherwise."""
    found = _BY_NAME.get(name.lower())
    if found is None:
        raise MarketSpecError(f"gpu={name} is not a known GPU model{_did_you_mean(name, _gpu_candidates())}"
                              " (`underbid market models` lists them)")
    return found


def checked_spec(spec: str) -> str:
    """The canonical spec, after checking its model, memory and region against the catalogue.

    Raises MarketSpecError naming the part and, for a near miss, what was probably meant.
    """
    canonical = canonical_spec(spec)
    fields = dict(part.split("=", 1) for part in canonical.split(";"))
    model = gpu_model(fields["gpu"])
    vram = int(fields["vram"])
    if vram not in model.vram_gb:
        sizes = " or ".join(f"vram={size}" for size in model.vram_gb)
        raise MarketSpecError(f"vram={vram}: {model.name} comes with {sizes} (GB per GPU)")
    if fields["region"] not in REGIONS:
        raise MarketSpecError(f"region={fields['region']} is not a known region"
                              f"{_did_you_mean(fields['region'], {r: r for r in REGIONS})}"
                              f" (known: {', '.join(REGIONS)})")
    return canonical


def market_label(spec: str) -> str:
    """A short label for people: `H100 80GB ×8 · us-east` (the spec itself if it is not canonical)."""
    try:
        fields = dict(part.split("=", 1) for part in canonical_spec(spec).split(";"))
    except (MarketSpecError, ValueError):
        return spec
    known = _BY_NAME.get(fields["gpu"])
    model = known.label if known else fields["gpu"]
    region = "any region" if fields["region"] == "any" else fields["region"]
    return f"{model} {fields['vram']}GB ×{fields['gpus']} · {region}"


def _gpu_candidates() -> dict[str, str]:
    """What a user may have meant to type, mapped to the model's spec name (`h100` -> nvidia-h100)."""
    candidates = {model.name: model.name for model in GPU_MODELS}
    candidates.update({model.model: model.name for model in GPU_MODELS})
    return candidates


def _did_you_mean(typed: str, candidates: dict[str, str]) -> str:
    close = difflib.get_close_matches(typed.lower(), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {candidates[close[0]]}?" if close else ""
