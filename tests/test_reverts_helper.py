"""The strict `reverts` helper reads revert data in every form anvil writes it."""

from eth_abi import encode

from .reverts import revert_data

SELECTOR = "2af737bf"  # ChallengeWindowClosed(uint64,uint256)


def test_hex_arguments():
    args = encode(["uint64", "uint256"], [1, 0x6B02CF55])
    assert revert_data(f"custom error 0x{SELECTOR}: {args.hex()}") == bytes.fromhex(SELECTOR) + args


def test_arguments_that_anvil_printed_as_text():
    # 0x6b02cca1 makes every argument byte valid UTF-8, and anvil then prints them as text.
    args = encode(["uint64", "uint256"], [1, 0x6B02CCA1])
    assert revert_data(f"custom error 0x{SELECTOR}: {args.decode('utf-8')}") == bytes.fromhex(SELECTOR) + args


def test_no_arguments_and_bare_hex():
    assert revert_data(f"custom error 0x{SELECTOR}") == bytes.fromhex(SELECTOR)
    assert revert_data(f"0x{SELECTOR}00") == bytes.fromhex(SELECTOR + "00")
    assert revert_data("execution reverted") is None


def test_text_arguments_that_lost_a_trailing_space():
    # 7200 = 0x1c20 ends in 0x20, which the text form drops as trailing white space.
    args = encode(["uint256", "uint256"], [0x6B02CCA1, 0x1C20])
    text = args.decode("utf-8").rstrip(" ")
    assert revert_data(f"custom error 0x{SELECTOR}: {text}") == bytes.fromhex(SELECTOR) + args
