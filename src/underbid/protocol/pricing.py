"""Why a market cleared at its price, and why an order got no lease: the reasons the matcher
records with each round and every client prints.

The rules themselves live in `underbid.matcher.clearing` (`_uniform_price`); this module only
names them, so that the CLI and the explorer can explain a price without importing the solver.
"""

from __future__ import annotations

from enum import StrEnum

from underbid.protocol.units import format_credits


class PriceRule(StrEnum):
    """What set a market's uniform price in a round (docs/PROTOCOL.md, "Pricing and clearing")."""

    #: supply was long: a bid that could have served some order was left unused
    CHEAPEST_UNUSED_BID = "cheapest unused bid"
    #: every such bid was used and demand was long: an order that some bid could serve was left unserved
    BEST_UNSERVED_ORDER = "best unserved order"
    #: nothing was left on either side
    MIDPOINT = "midpoint"
    #: the losing message's price was above every winner's max: the price is the lowest winning max
    LOWEST_WINNING_MAX = "lowest winning max"
    #: the losing message's price was below the dearest winning bid: the price is that bid
    DEAREST_WINNING_BID = "dearest winning bid"
    #: the losing message's price was below the orders the trial price left out: just above them
    ABOVE_PRICED_OUT = "above priced-out orders"
    #: the contract takes no zero price
    MINIMUM = "minimum"

    def explain(self, price: int) -> str:
        """`"2.10 = the cheapest bid left unused"`: the price with its reason, for people."""
        return f"{format_credits(price)} = {_EXPLANATIONS[self]}"


_EXPLANATIONS = {
    PriceRule.CHEAPEST_UNUSED_BID: "the cheapest bid left unused (more was offered than bought)",
    PriceRule.BEST_UNSERVED_ORDER: "the highest max price of an order left unserved (more was wanted than offered)",
    PriceRule.MIDPOINT: "midway between the dearest winning bid and the lowest winning max price"
    " (every bid and order that could trade did)",
    PriceRule.LOWEST_WINNING_MAX: "the lowest max price among the winning orders (every bid was used;"
    " the best order left out offered more)",
    PriceRule.DEAREST_WINNING_BID: "the dearest winning bid (the best message left out was priced below it)",
    PriceRule.ABOVE_PRICED_OUT: "just above the max price of the orders left out so that one price fits",
    PriceRule.MINIMUM: "the smallest price the contract takes",
}


def explain_price(price: int, rule: str | None) -> str:
    """The price with its reason; a rule this version does not know (an older or newer matcher)
    leaves the bare price."""
    try:
        return PriceRule(rule).explain(price) if rule else format_credits(price)
    except ValueError:
        return format_credits(price)
