"""The catalogue that market specs are checked against: typos are refused with what was meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from underbid.protocol.catalogue import GPU_MODELS, REGIONS, checked_spec, market_label
from underbid.protocol.markets import MarketSpecError, canonical_spec, market_id
from underbid.protocol.sdl import SdlError, load_sdl

DATA = Path(__file__).parent / "cli" / "data"
H100_8 = "gpu=nvidia-h100;vram=80;gpus=8;region=us-east"


@pytest.mark.parametrize("spec,meant", [
    ("gpu=nvidia-h10;vram=80;gpus=8;region=us-east", "did you mean nvidia-h100?"),
    ("gpu=nvidia-h100;vram=80;gpus=8;region=useast", "did you mean us-east?"),
    ("gpu=h100;vram=80;gpus=8;region=us-east", "did you mean nvidia-h100?"),
    ("gpu=nvidia-h100;vram=800;gpus=8;region=us-east", "nvidia-h100 comes with vram=80 or vram=94"),
])
def test_typos_are_refused_with_what_was_meant(spec, meant):
    with pytest.raises(MarketSpecError, match="") as refused:
        checked_spec(spec)
    assert meant in str(refused.value) and "\n" not in str(refused.value)


def test_a_checked_spec_keeps_its_market_id():
    """Checking adds no field and changes no spelling: the id is the one the spec always had."""
    assert checked_spec("region=US-East;gpus=08;vram=80;gpu=NVIDIA-H100") == H100_8
    assert market_id(checked_spec(H100_8)) == market_id(H100_8)
    assert checked_spec("gpu=nvidia-a100;vram=40;gpus=1") == "gpu=nvidia-a100;vram=40;gpus=1;region=any"


def test_every_catalogue_entry_is_a_valid_market():
    for model in GPU_MODELS:
        for size in model.vram_gb:
            for region in REGIONS:
                assert checked_spec(f"gpu={model.name};vram={size};gpus=1;region={region}")


def test_labels():
    assert market_label(H100_8) == "H100 80GB ×8 · us-east"
    assert market_label("gpu=amd-mi300x;vram=192;gpus=1") == "MI300X 192GB ×1 · any region"
    assert market_label("not a spec") == "not a spec"
    assert market_label(canonical_spec("gpu=test-cheap;vram=1;gpus=1;region=nowhere")) == "test-cheap 1GB ×1 · nowhere"


def test_sdl_model_without_ram_takes_the_catalogue_memory():
    found = load_sdl(DATA / "no-ram.yaml")
    assert found.spec == "gpu=nvidia-l40s;vram=48;gpus=8;region=us-east"


def test_sdl_list_of_models_takes_the_first():
    assert load_sdl(DATA / "two-models.yaml").spec.startswith("gpu=nvidia-a100;vram=80;")


def test_sdl_typo_names_the_part_and_the_meant_model():
    with pytest.raises(SdlError, match=r"profiles\.compute\.trainer: gpu=nvidia-h10 .*did you mean nvidia-h100"):
        load_sdl(DATA / "typo-model.yaml")
