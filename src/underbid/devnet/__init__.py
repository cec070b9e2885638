"""A local devnet: contract deployment through ape (`deploy`), anvil and the matcher as
processes (`node`), and the narrated demo market (`demo`).
"""
