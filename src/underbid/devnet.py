"""Local devnet facts: the well-known test mnemonic that anvil and ape both use."""

from __future__ import annotations

from functools import cache

from eth_account import Account
from eth_account.signers.local import LocalAccount

#: anvil's and ape's default test mnemonic. These keys are public: devnet use only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_RPC = "http://127.0.0.1:8545"
#: Account roles on the devnet, by index (ape's test accounts follow the same order).
DEPLOYER, MATCHER = 0, 1


@cache
def dev_account(index: int) -> LocalAccount:
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
