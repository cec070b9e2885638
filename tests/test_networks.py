"""Address book names per network, as `ape run deploy` writes them and `--network` reads them."""

from __future__ import annotations

import pytest

from underbid.chain.networks import NetworkError, book_name, book_path, normalize_name


@pytest.mark.parametrize(("ecosystem", "network", "chain_id", "name"), [
    ("ethereum", "local", 31337, "local"),  # the devnet keeps deployments/local.json
    ("ethereum", "sepolia", 11155111, "sepolia"),
    ("base", "sepolia", 84532, "base-sepolia"),  # not "sepolia": Ethereum's Sepolia has that
    ("arbitrum", "sepolia", 421614, "arbitrum-sepolia"),
    ("ethereum", "custom", 777, "chain-777"),  # ape's name for a network given by its URL
])
def test_book_name_per_network(ecosystem, network, chain_id, name):
    assert book_name(ecosystem, network, chain_id) == name
    if network != "custom":  # `--network base:sepolia:node` finds the book that deploy wrote
        assert normalize_name(f"{ecosystem}:{network}:node") == name


def test_an_unknown_network_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("UNDERBID_DEPLOYMENTS", str(tmp_path))
    (tmp_path / "base-sepolia.json").write_text(
        '{"network": "base-sepolia", "chain_id": 84532, "block": 1, "deployer": "0x0", "contracts": {}}'
    )
    assert book_path("base:sepolia") == tmp_path / "base-sepolia.json"
    known = r"no address book for network 'sepolia' .*known: base-sepolia \(chain 84532\)"
    with pytest.raises(NetworkError, match=known):
        book_path("sepolia")
