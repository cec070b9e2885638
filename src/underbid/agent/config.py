"""The provider agent's configuration: the capacity it offers per market, at what price, and how
often it acts.

A TOML file (`underbid provider run --config provider.toml`):

    heartbeat_every = "30s"   # default: half the protocol's heartbeat interval
    claim_every = "10m"       # claim accrued payment this often (ended leases are claimed at once)

    [[offer]]
    market = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"
    capacity = 3              # units of this market the provider has; the agent keeps them offered
    price = "1.25"            # credits (UBC) per unit-hour
    max_duration = "24h"      # longest lease accepted
    valid = "1h"              # each bid's lifetime; the agent posts a new one when it expires
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from underbid.protocol.catalogue import checked_spec
from underbid.protocol.markets import MarketSpecError
from underbid.protocol.units import CREDIT_DECIMALS, AmountError, DurationError, parse_amount, parse_duration


class ConfigError(ValueError):
    """A configuration the agent cannot run with; the message names the field and the reason."""


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration such as 90s, 30m or 2h")
    if isinstance(value, (str, int)):
        try:
            return parse_duration(value, "s")
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return value


class Offer(BaseModel):
    """Capacity a provider keeps offered in one market."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the canonical market spec, checked against the catalogue
    market: str
    capacity: int = Field(ge=1, le=2**32 - 1)
    #: credit base units per unit-hour
    price: int = Field(ge=1, le=2**64 - 1)
    max_duration: int = Field(default=24 * 3600, ge=1, le=2**32 - 1)
    valid: int = Field(default=3600, ge=60, le=30 * 86400)

    @field_validator("market", mode="before")
    @classmethod
    def _market(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return checked_spec(value)
        except MarketSpecError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return value
        if isinstance(value, float):
            raise ValueError('write the price as a string, e.g. "1.25" (a float loses digits)')
        try:  # in credits per unit-hour: 2 and "2" both mean 2 UBC
            return parse_amount(str(value), CREDIT_DECIMALS, what="price")
        except AmountError as exc:
            raise ValueError(str(exc)) from None

    _durations = field_validator("max_duration", "valid", mode="before")(_duration)


class AgentConfig(BaseModel):
    """What the agent offers and its schedule (durations in chain seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    offers: tuple[Offer, ...] = Field(alias="offer", min_length=1, max_length=64)
    #: heartbeat once the oldest running lease's last heartbeat is this old; None: half the interval
    heartbeat_every: int | None = Field(default=None, ge=1)
    claim_every: int = Field(default=600, ge=1)
    #: wall-clock seconds between ticks
    poll: float = Field(default=2.0, gt=0, le=60)

    _durations = field_validator("heartbeat_every", "claim_every", mode="before")(_duration)

    @model_validator(mode="after")
    def _one_offer_per_market(self) -> AgentConfig:
        markets = [offer.market for offer in self.offers]
        for market in markets:
            if markets.count(market) > 1:
                raise ValueError(f"two offers for market {market}: give one offer per market with its whole capacity")
        return self


def parse_config(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """An AgentConfig from parsed TOML (or the CLI's options); ConfigError names the bad field."""
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        reason = str(first["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {reason}{more}") from None


def load_config(path: Path) -> AgentConfig:
    """Reads a TOML config file; ConfigError with the file, the field and the reason."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, str(path))
