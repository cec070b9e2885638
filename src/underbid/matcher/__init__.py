"""The off-chain matcher, one module per stage:

    api ──→ rounds ──→ validation ──→ store
              ├──────→ clearing (pure)
              └──────→ submission ──→ store

`api` is the HTTP face; `rounds` owns intake (validation, receipts) and the round lifecycle;
`validation` judges a message against the chain and the store; `clearing` computes the
allocation and prices (`netsimplex` is its compiled min-cost flow solver); `submission` turns a
round into `settle` transactions. `service` runs the process; `failpoints` names crash points for
the tests. No module imports one to its left, and
all of them use only `underbid.chain` and `underbid.protocol` besides.
"""
