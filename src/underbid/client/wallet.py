"""Encrypted keystore accounts: Web3 Secret Storage v3 JSON files, the format geth and ape use.

Accounts live in `~/.underbid/accounts/<alias>.json` (or `$UNDERBID_HOME/accounts`). Ape's own
folder (`~/.ape/accounts`, or `$APE_DATA_FOLDER/accounts`) is read as well, so accounts made
with `ape accounts generate` or `ape accounts import` work here unchanged, and files written here
with `--ape` show up in `ape accounts list`.

On a local devnet (chain 31337) `dev:<n>` names the n-th well-known test key (no password).
`env:<VAR>` names the private key held in the environment variable VAR (a secret a service
manager or container runtime injects; no keystore, no password).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex_address, to_checksum_address

from underbid.devnet.node import dev_account

DEV_PREFIX = "dev:"
ENV_PREFIX = "env:"
#: chain id of anvil / hardhat devnets: the only chains where `dev:<n>` accounts may be used.
DEV_CHAIN_ID = 31337
PASSWORD_ENV = "UNDERBID_PASSWORD"
#: scrypt work factor for new keystores; lower only for tests (`$UNDERBID_SCRYPT_N`).
DEFAULT_SCRYPT_N = 2**18
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WalletError(Exception):
    """A one-line wallet error: unknown account, wrong password, unreadable keystore."""


def underbid_home() -> Path:
    return Path(os.environ.get("UNDERBID_HOME") or Path.home() / ".underbid")


def underbid_accounts_dir() -> Path:
    return underbid_home() / "accounts"


def ape_accounts_dir() -> Path:
    return Path(os.environ.get("APE_DATA_FOLDER") or Path.home() / ".ape") / "accounts"


@dataclass(frozen=True)
class KeystoreEntry:
    alias: str
    address: str
    path: Path | None
    source: str  # "underbid", "ape", "dev" or "env"

    @property
    def is_dev(self) -> bool:
        return self.source == "dev"

    @property
    def needs_password(self) -> bool:
        return self.source in ("underbid", "ape")


def _read_entry(path: Path, source: str) -> KeystoreEntry | None:
    try:
        data = json.loads(path.read_text())
        address = to_checksum_address("0x" + str(data["address"]).removeprefix("0x"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a keystore file: ignored, as `ape accounts list` does
    return KeystoreEntry(path.stem, address, path, source)


def list_accounts() -> list[KeystoreEntry]:
    """Every keystore account: underbid's folder first, then ape's (an alias in both: underbid's wins)."""
    entries: list[KeystoreEntry] = []
    seen: set[str] = set()
    for folder, source in ((underbid_accounts_dir(), "underbid"), (ape_accounts_dir(), "ape")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            entry = _read_entry(path, source)
            if entry is not None and entry.alias not in seen:
                seen.add(entry.alias)
                entries.append(entry)
    return entries


def find_account(name: str) -> KeystoreEntry:
    """The account called `name` (an alias, an address, or `dev:<n>`). Raises WalletError."""
    name = name.strip()
    if name.startswith(DEV_PREFIX):
        index = name[len(DEV_PREFIX):]
        if not index.isdigit() or int(index) > 1000:
            raise WalletError(f"dev account {name!r}: use dev:<n> with n a small whole number, e.g. dev:2")
        return KeystoreEntry(name, dev_account(int(index)).address, None, "dev")
    if name.startswith(ENV_PREFIX):
        return KeystoreEntry(name, _env_key(name).address, None, "env")
    accounts = list_accounts()
    for entry in accounts:
        if entry.alias == name:
            return entry
    if is_hex_address(name):
        for entry in accounts:
            if entry.address.lower() == name.lower():
                return entry
    known = ", ".join(e.alias for e in accounts) or "none yet"
    raise WalletError(
        f"unknown account {name!r} (known: {known}): create one with `underbid account new` or import a key"
    )


def _env_key(name: str) -> LocalAccount:
    """The account whose private key is in the environment variable `env:<VAR>` names."""
    var = name[len(ENV_PREFIX):]
    text = os.environ.get(var) if var else None
    if not text:
        raise WalletError(f"account {name!r}: ${var or '<VAR>'} is not set (env:<VAR> names a private key held there)")
    try:
        return parse_private_key(text)
    except WalletError:
        raise WalletError(f"account {name!r}: ${var} is not a private key (64 hex digits)") from None


def unlock(entry: KeystoreEntry, password: str | None) -> LocalAccount:
    """Decrypts the keystore. Raises WalletError for a wrong password or an unreadable file."""
    if entry.is_dev:
        return dev_account(int(entry.alias[len(DEV_PREFIX):]))
    if entry.source == "env":
        return _env_key(entry.alias)
    assert entry.path is not None
    try:
        keyfile = json.loads(entry.path.read_text())
    except (OSError, ValueError) as exc:
        raise WalletError(f"cannot read keystore {entry.path}: {exc}") from None
    if password is None:
        raise WalletError(f"account {entry.alias!r} needs its password")
    try:
        key = Account.decrypt(keyfile, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WalletError(f"wrong password for account {entry.alias!r}") from None
        raise WalletError(f"cannot decrypt keystore {entry.path}: {exc}") from None
    return Account.from_key(key)


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise WalletError(
            f"account name {alias!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return alias


def parse_private_key(text: str) -> LocalAccount:
    text = text.strip()
    try:
        return Account.from_key(text if text.startswith("0x") else "0x" + text)
    except (ValueError, TypeError):
        raise WalletError("that is not a private key: expected 32 bytes as 64 hex digits") from None


def save_account(alias: str, account: LocalAccount, password: str, *, ape: bool = False) -> KeystoreEntry:
    """Encrypts `account` with `password` into a new keystore file. Raises WalletError if the alias exists."""
    check_alias(alias)
    for entry in list_accounts():
        if entry.alias == alias:
            raise WalletError(f"an account named {alias!r} already exists ({entry.path})")
        if entry.address == account.address:
            raise WalletError(f"address {account.address} is already stored as {entry.alias!r} ({entry.path})")
    if not password:
        raise WalletError("the password must not be empty")
    folder = ape_accounts_dir() if ape else underbid_accounts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        folder.chmod(0o700)
    n = int(os.environ.get("UNDERBID_SCRYPT_N") or DEFAULT_SCRYPT_N)
    if n < 2**10 or n & (n - 1):
        raise WalletError("$UNDERBID_SCRYPT_N must be a power of two of at least 1024")
    keyfile = Account.encrypt(account.key, password, kdf="scrypt", iterations=n)
    path = folder / f"{alias}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(keyfile, out)
    tmp.replace(path)
    return KeystoreEntry(alias, account.address, path, "ape" if ape else "underbid")


def read_password_file(path: Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise WalletError(f"cannot read password file {path}: {exc.strerror or exc}") from None
    return text.rstrip("\r\n")
