// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";

/// @title The one place where Underbid checks a signature.
/// @dev Only 65-byte signatures are accepted, and OpenZeppelin's ECDSA rejects high-s (malleated)
/// ones and bad `v` values; chain id and contract binding come from the EIP-712 domain separator
/// folded into `digest` by the caller.
library SignatureVerification {
    /// @dev Reverts unless `signature` over `digest` was made by `signer`.
    /// @param digest The EIP-712 digest (domain separator and struct hash).
    /// @param signature A 65-byte (r, s, v) signature.
    /// @param signer The address that must have signed.
    /// Reverts with `InvalidSignature` when the signature is not 65 bytes or cannot be recovered, and with
    /// `SignerMismatch` when it recovers to another address.
    function verify(bytes32 digest, bytes calldata signature, address signer) internal pure {
        // Same checks as `ECDSA.tryRecover(digest, signature)` (a 65-byte (r, s, v) signature,
        // low s, a valid v), but r, s and v are read straight from calldata: passing `bytes
        // calldata` to OpenZeppelin's `bytes memory` overload copies it to memory first (~250 gas
        // per signature in `settle`, two per match).
        if (signature.length != 65) revert IUnderbidErrors.InvalidSignature();
        bytes32 r;
        bytes32 s;
        uint8 v;
        // Safe: the length is exactly 65, so the three reads stay inside the signature.
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        // Slither: the error argument only details `err`, which is checked.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, v, r, s);
        if (err != ECDSA.RecoverError.NoError) revert IUnderbidErrors.InvalidSignature();
        if (recovered != signer) revert IUnderbidErrors.SignerMismatch(signer, recovered);
    }
}
