// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";

/// @title The one place where Underbid checks a signature.
/// @dev OpenZeppelin's ECDSA rejects high-s (malleated) signatures and bad lengths; chain id and
/// contract binding come from the EIP-712 domain separator folded into `digest` by the caller.
library SignatureVerification {
    /// @dev Reverts unless `signature` over `digest` was made by `signer`.
    /// @param digest The EIP-712 digest (domain separator and struct hash).
    /// @param signature A 65-byte (r, s, v) signature.
    /// @param signer The address that must have signed.
    /// Reverts with `InvalidSignature` when the signature cannot be recovered, and with
    /// `SignerMismatch` when it recovers to another address.
    function verify(bytes32 digest, bytes calldata signature, address signer) internal pure {
        // Slither: the error argument only details `err`, which is checked.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) revert IUnderbidErrors.InvalidSignature();
        if (recovered != signer) revert IUnderbidErrors.SignerMismatch(signer, recovered);
    }
}
