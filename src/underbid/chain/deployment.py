"""The address book: where a deployment's contracts live, and their ABIs.

`scripts/deploy.py` writes `deployments/<network>.json`; everything else (matcher, CLI, tests)
loads it through `AddressBook.load` and gets web3 contract objects from it, so no Python code
needs the compiler or ape at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from pydantic import BaseModel, Field
from web3 import Web3
from web3.contract import Contract

from underbid.protocol.eip712 import Domain

#: Contract names in the address book, as compiled.
CONTRACT_NAMES = (
    "UnderbidToken",
    "UnderbidCredit",
    "PriceOracle",
    "BurnMintEquilibrium",
    "UnderbidSettlement",
    "UnderbidTimelock",
    "MatcherCourt",
)


class DeployedContract(BaseModel):
    address: str
    abi: list[dict[str, Any]]


class AddressBook(BaseModel):
    network: str
    chain_id: int
    block: int = Field(description="Block of the first deployment transaction; log scans start here.")
    deployer: str
    contracts: dict[str, DeployedContract]
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters the contracts were deployed with.")
    devnet: bool = Field(
        default=False,
        description="Deployed on a local devnet from its public dev keys: devnet-only commands may run on it.",
    )
    rpc: str | None = Field(default=None, description="The RPC URL commands use with `--network <name>`.")
    ape_network: str | None = Field(
        default=None, description="ape's `ecosystem:network:provider` it was deployed with."
    )

    @classmethod
    def load(cls, path: str | Path) -> AddressBook:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"no address book at {path}: deploy first (ape run deploy)") from None
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)  # atomic: a crash never leaves a half-written address book
        return path

    def contract(self, w3: Web3, name: str) -> Contract:
        entry = self.contracts[name]
        return w3.eth.contract(address=Web3.to_checksum_address(entry.address), abi=entry.abi)

    def address(self, name: str) -> ChecksumAddress:
        return Web3.to_checksum_address(self.contracts[name].address)

    @property
    def domain(self) -> Domain:
        return Domain(chain_id=self.chain_id, verifying_contract=self.address("UnderbidSettlement"))
