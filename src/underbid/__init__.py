"""Underbid off-chain matcher: validation, storage, clearing and settlement of GPU compute rounds."""
