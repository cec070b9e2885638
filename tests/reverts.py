"""A strict `ape.reverts`: the test suite's one way to expect a custom error.

NOTE: `ape.reverts(contract.Error)` accepts ANY revert it could not decode (an error raised in a
nested contract and seen through `eth_call`, a constructor revert) and silently ignores input
names the error does not have. `reverts` below also checks the 4-byte selector of undecoded revert
data and refuses unknown input names.
"""

import re
from contextlib import contextmanager

import ape
from ape.exceptions import CustomError
from eth_abi import decode
from eth_utils import keccak


@contextmanager
def reverts(error, **inputs):
    """`ape.reverts(error, **inputs)`, but strict.

    `ape.reverts` accepts ANY revert it could not decode (a nested error seen through `eth_call`, a
    constructor revert) and silently ignores input names the error does not have. This checks the
    selector of undecoded revert data too, and rejects unknown input names.
    """
    abi = error.abi
    names = [i.name for i in abi.inputs]
    assert set(inputs) <= set(names), f"{abi.name} has no input(s) {set(inputs) - set(names)}"
    with ape.reverts() as info:
        yield info
    exc = info.value
    if isinstance(exc, CustomError):
        assert type(exc).__name__ == abi.name, f"expected {abi.name}, reverted with {type(exc).__name__}"
        actual = dict(exc.inputs)
    else:
        text = str(exc.revert_message or exc)
        data = revert_data(text)
        assert data is not None, f"expected {abi.name}, reverted with {text!r}"
        assert data[:4] == keccak(text=abi.selector)[:4], f"expected {abi.name}, reverted with {text!r}"
        actual = dict(zip(names, decode([i.type for i in abi.inputs], data[4:]), strict=True))
    for name, expected in inputs.items():
        assert _norm(actual[name]) == _norm(expected), f"{abi.name}.{name}: {actual[name]!r} != {expected!r}"


def revert_data(text: str) -> bytes | None:
    """The revert data in a message the node could not decode, or None if it carries none.

    NOTE: anvil writes a custom error as `custom error 0x<selector>: <arguments>`, the arguments
    in hex, except when their bytes happen to be valid UTF-8: then it writes them as text
    (`custom error 0x2af737bf: \x00...k\x02\u0321` for a timestamp ending 0xcca1), and then trailing
    spaces are lost. Both forms are read.
    """
    if m := re.fullmatch(r"custom error 0x([0-9a-fA-F]{8})(?:: (.*))?", text, re.DOTALL):
        arguments = m[2] or ""
        if re.fullmatch(r"(?:[0-9a-fA-F]{2})*", arguments):
            return bytes.fromhex(m[1] + arguments)
        raw = arguments.encode("utf-8")
        # The text form loses trailing white space (an argument ending in byte 0x20, say 7200 =
        # 0x1c20): arguments are whole 32-byte words, so pad the cut word back with spaces.
        if len(raw) % 32:
            raw += b" " * (32 - len(raw) % 32)
        return bytes.fromhex(m[1]) + raw
    if m := re.fullmatch(r"0x((?:[0-9a-fA-F]{2}){4,})", text):
        return bytes.fromhex(m[1])
    return None


def error_name(contract, exc) -> str:
    """The name of the custom error of `contract` that `exc` (a revert) carries, decoded by its
    selector when ape could not name it."""
    if isinstance(exc, CustomError):
        return type(exc).__name__
    text = str(exc.revert_message or exc)
    data = revert_data(text)
    if data is None and (m := re.search(r"0x([0-9a-fA-F]{8})", text)):
        data = bytes.fromhex(m[1])
    assert data is not None, f"not a custom error: {text!r}"
    names = {keccak(text=e.selector)[:4]: e.name for e in contract.contract_type.errors}
    return names.get(data[:4], f"unknown selector 0x{data[:4].hex()}")


def _norm(value):
    if hasattr(value, "address"):
        value = value.address
    if isinstance(value, str) and value.startswith("0x"):
        return value.lower()
    if isinstance(value, bytes):
        return bytes(value)
    return value
