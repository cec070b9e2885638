"""The protocol's shared vocabulary: the EIP-712 messages, market ids, human amounts, Akash SDL.

Depends on nothing else in the package; everything else may depend on it.
"""
