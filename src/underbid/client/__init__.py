"""The user's side: a session with the chain and the matcher (`session`) and keystores (`wallet`).
The `underbid.cli` commands parse, call these and print.
"""
