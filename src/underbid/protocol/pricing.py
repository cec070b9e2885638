"""Why a market cleared at its price, and why an order got no lease: the reasons the matcher
records with each round and every client prints.

The rules themselves live in `underbid.matcher.clearing` (`_uniform_price`); this module only
names them, so that the CLI and the explorer can explain a price without importing the solver.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def known_rule(rule: str | None) -> PriceRule | None:
    """The rule named `rule`, if this version knows it (a store written by a newer matcher may
    name others; one written before rules were names none)."""
    try:
        return PriceRule(rule) if rule else None
    except ValueError:
        return None


def explain_price(price: int, rule: str | None) -> str:
    """The price with its reason; a rule this version does not know (an older or newer matcher)
    leaves the bare price."""
    try:
        return PriceRule(rule).explain(price) if rule else format_credits(price)
    except ValueError:
        return format_credits(price)


class NoMatch(StrEnum):
    """Why an order left a round with units unmatched (docs/PROTOCOL.md, "Why no match")."""

    #: no bid was open in the order's market
    NO_BIDS = "no bids"
    #: bids were open, but none accepts a lease as long as the order's
    DURATION_TOO_LONG = "duration too long"
    #: every bid long enough asks more than the order's max price
    PRICE_TOO_LOW = "max price too low"
    #: a bid could serve it, but the market's one price came out above the order's max
    PRICED_OUT = "priced out"
    #: the bids it could take went to orders that gain more from them (higher max, longer lease)
    OUTBID = "outbid"
    #: every unit it could take went to it, and it wanted more
    TOO_FEW_UNITS = "too few units offered"


@dataclass(frozen=True)
class Unmatched:
    """An order's outcome in the last round that left it with units unmatched: the reason, a
    sentence for people, and the units matched of those it still wanted in that round."""

    round: int
    reason: NoMatch
    detail: str
    matched: int
    wanted: int

    def line(self) -> str:
        """`"1 of 2 units matched in round 4: outbid: ..."`."""
        part = (f"{self.matched} of {self.wanted} units matched in round {self.round}" if self.matched
                else f"not matched in round {self.round}")
        return f"{part}: {self.reason.value}: {self.detail}"
