"""Derives an Underbid market spec from an Akash SDL file (Stack Definition Language, v2.0/2.1).

What is read, for each service deployed in the SDL:
- `profiles.compute.<profile>.resources.gpu.units`: GPUs per instance (the spec's `gpus`);
- `...gpu.attributes.vendor.<vendor>`: one vendor, with one `model` and its `ram` (`gpu=<vendor>-<model>`, `vram`);
- `deployment.<service>.<placement>.count`: instances, which become the order's units;
- `profiles.placement.<placement>.attributes.region` (or `location-region`), when present.

Anything that cannot be mapped to exactly one market (no GPU, several models, a model without its
RAM, GPU profiles that differ between services) is an `SdlError` naming the unsupported part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from underbid.protocol.catalogue import checked_spec, gpu_model
from underbid.protocol.markets import MarketSpecError, market_id


class SdlError(ValueError):
    """An SDL file that cannot be read or mapped to one market; the message names the part."""


@dataclass(frozen=True)
class SdlMarket:
    """The market an SDL asks for, and how many units (instances) of it."""

    spec: str
    market: str
    units: int
    services: tuple[str, ...]


_RAM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gi|gib|g|gb|ti|tib|t|tb)?\s*$", re.IGNORECASE)


def _ram_gb(value: Any, where: str) -> int:
    match = _RAM.match(str(value))
    if not match:
        raise SdlError(f"{where}: GPU ram {value!r} is not a size such as 80Gi")
    number, unit = float(match.group(1)), (match.group(2) or "gi").lower()
    if unit.startswith("t"):
        number *= 1024
    if number != int(number) or number <= 0:
        raise SdlError(f"{where}: GPU ram {value!r} is not a whole, positive number of GB")
    return int(number)


def _mapping(node: Any, where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise SdlError(f"{where} must be a mapping")
    return node


def _gpu_spec(profile_name: str, profile: Any) -> tuple[str, int, int]:
    """(gpu, vram, gpus) of one compute profile."""
    where = f"profiles.compute.{profile_name}.resources.gpu"
    resources = _mapping(_mapping(profile, f"profiles.compute.{profile_name}").get("resources"),
                         f"profiles.compute.{profile_name}.resources")
    gpu = resources.get("gpu")
    if gpu is None:
        raise SdlError(f"{where} is missing: an Underbid market needs GPUs")
    gpu = _mapping(gpu, where)
    units = gpu.get("units")
    try:
        units = int(str(units))
    except ValueError:
        raise SdlError(f"{where}.units {units!r} is not a whole number") from None
    if units <= 0:
        raise SdlError(f"{where}.units is {units}: an Underbid market needs at least one GPU")
    vendors = _mapping(
        _mapping(gpu.get("attributes"), f"{where}.attributes").get("vendor"), f"{where}.attributes.vendor"
    )
    if len(vendors) != 1:
        raise SdlError(
            f"{where}.attributes.vendor lists {len(vendors)} vendors ({', '.join(vendors)}); a market needs exactly one"
        )
    vendor, models = next(iter(vendors.items()))
    if not models:
        raise SdlError(f"{where}.attributes.vendor.{vendor} names no model (any model cannot be one market)")
    if not isinstance(models, list):
        raise SdlError(f"{where}.attributes.vendor.{vendor} must be a list of models")
    # Akash reads a list of models as "any of these"; one order trades in one market, so the
    # first model listed (the SDL's first choice) sets it.
    model = _mapping(models[0], f"{where}.attributes.vendor.{vendor}[0]")
    if not model.get("model"):
        raise SdlError(f"{where}.attributes.vendor.{vendor}[0] has no model")
    name = f"{vendor}-{model['model']}".lower()
    if model.get("ram") is None:
        # Without `ram`, the catalogue knows the memory when the model is sold in one size.
        try:
            sizes = gpu_model(name).vram_gb
        except MarketSpecError as exc:
            raise SdlError(f"{where}.attributes.vendor.{vendor}[0]: {exc}") from None
        if len(sizes) != 1:
            raise SdlError(f"{where}.attributes.vendor.{vendor}[0].ram is missing and {name} comes with"
                           f" {' or '.join(f'{size}Gi' for size in sizes)}: say which")
        return name, sizes[0], units
    vram = _ram_gb(model["ram"], f"{where}.attributes.vendor.{vendor}[0]")
    return name, vram, units


def _region(placement_name: str, placement: Any) -> str | None:
    attributes = _mapping(placement, f"profiles.placement.{placement_name}").get("attributes") or {}
    if isinstance(attributes, list):  # the older list form: [{key: region, value: us-east}]
        attributes = {a.get("key"): a.get("value") for a in attributes if isinstance(a, dict)}
    attributes = _mapping(attributes, f"profiles.placement.{placement_name}.attributes")
    region = attributes.get("region") or attributes.get("location-region")
    return str(region).lower() if region else None


def parse_sdl(text: str, *, service: str | None = None, source: str = "SDL") -> SdlMarket:
    """Maps SDL text to one market. `service` picks one deployed service when several differ."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SdlError(f"{source} is not valid YAML{where}") from None
    doc = _mapping(doc, source)
    profiles = _mapping(doc.get("profiles"), "profiles")
    compute = _mapping(profiles.get("compute"), "profiles.compute")
    placements = _mapping(profiles.get("placement") or {}, "profiles.placement")
    deployment = _mapping(doc.get("deployment"), "deployment")
    if service is not None:
        if service not in deployment:
            raise SdlError(f"deployment.{service} is not in the SDL (services: {', '.join(deployment)})")
        deployment = {service: deployment[service]}

    found: dict[str, list[str]] = {}
    units: dict[str, int] = {}
    for name, groups in deployment.items():
        for placement_name, entry in _mapping(groups, f"deployment.{name}").items():
            entry = _mapping(entry, f"deployment.{name}.{placement_name}")
            profile_name = entry.get("profile")
            if profile_name not in compute:
                raise SdlError(
                    f"deployment.{name}.{placement_name}.profile {profile_name!r} is not in profiles.compute"
                )
            try:
                count = int(str(entry.get("count", 1)))
            except ValueError:
                raise SdlError(f"deployment.{name}.{placement_name}.count is not a whole number") from None
            if count <= 0:
                raise SdlError(f"deployment.{name}.{placement_name}.count must be at least 1")
            resources = _mapping(compute[profile_name], f"profiles.compute.{profile_name}").get("resources") or {}
            if "gpu" not in resources and service is None and len(deployment) > 1:
                continue  # a CPU-only sidecar next to GPU services: not part of the market
            gpu, vram, gpus = _gpu_spec(profile_name, compute[profile_name])
            region = _region(placement_name, placements[placement_name]) if placement_name in placements else None
            raw = f"gpu={gpu};vram={vram};gpus={gpus}" + (f";region={region}" if region else "")
            try:
                spec = checked_spec(raw)
            except MarketSpecError as exc:
                raise SdlError(f"profiles.compute.{profile_name}: {exc}") from None
            found.setdefault(spec, []).append(name)
            units[spec] = units.get(spec, 0) + count
    if not found:
        raise SdlError("no service in the SDL requests a GPU: an Underbid market needs GPUs")
    if len(found) > 1:
        listing = "; ".join(f"{', '.join(names)} -> {spec}" for spec, names in found.items())
        raise SdlError(f"the SDL's GPU services need different markets ({listing}): pick one with --service")
    spec, names = next(iter(found.items()))
    return SdlMarket(spec=spec, market=market_id(spec), units=units[spec], services=tuple(names))


def load_sdl(path: str | Path, *, service: str | None = None) -> SdlMarket:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SdlError(f"cannot read SDL file {path}: {exc.strerror or exc}") from None
    return parse_sdl(text, service=service, source=str(path))
