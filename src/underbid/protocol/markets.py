"""Markets: standardized units of compute, so that bids are comparable.

A market id is `keccak256` of a canonical spec string built from normalized fields, in a fixed
order: `gpu=nvidia-h100;vram=80;gpus=8;region=us-east`.
"""

from __future__ import annotations

import re

from eth_utils import keccak

#: Spec fields, in canonical order. `region` is optional ("any" when absent).
SPEC_FIELDS = ("gpu", "vram", "gpus", "region")
_TOKEN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class MarketSpecError(ValueError):
    """A market spec string that cannot be normalized."""


def canonical_spec(spec: str) -> str:
    """Normalizes `spec` ("key=value;..." in any order and case) to its canonical string.

    Raises MarketSpecError naming the offending part.
    """
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or not value:
            raise MarketSpecError(f"market spec part {part!r} is not key=value")
        if key not in SPEC_FIELDS:
            raise MarketSpecError(f"unknown market spec field {key!r}; expected {', '.join(SPEC_FIELDS)}")
        if key in fields:
            raise MarketSpecError(f"market spec field {key!r} given twice")
        if not _TOKEN.match(value):
            raise MarketSpecError(f"market spec {key}={value!r}: use lowercase letters, digits, '.', '_' or '-'")
        fields[key] = value
    fields.setdefault("region", "any")
    missing = [f for f in SPEC_FIELDS if f not in fields]
    if missing:
        raise MarketSpecError(f"market spec is missing {', '.join(missing)}")
    for key in ("vram", "gpus"):
        if not fields[key].isdigit() or int(fields[key]) == 0:
            raise MarketSpecError(f"market spec {key} must be a positive whole number, got {fields[key]!r}")
        fields[key] = str(int(fields[key]))
    return ";".join(f"{key}={fields[key]}" for key in SPEC_FIELDS)


def market_id(spec: str) -> str:
    """The bytes32 market id (0x-hex) of a spec string."""
    return "0x" + keccak(text=canonical_spec(spec)).hex()
