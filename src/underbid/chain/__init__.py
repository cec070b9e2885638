"""Chain access: the address book of a deployment (`deployment`) and web3 reads with custom-error
decoding (`view`). Depends only on `underbid.protocol`.
"""
