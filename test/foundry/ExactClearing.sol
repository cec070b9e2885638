// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @dev An exactly optimal clearing of one market's small instance (<= 3 orders, <= 3 bids), by
/// brute force: for every candidate uniform price p (each bid's price), every allocation of units
/// to (order, bid) pairs with bid.price <= p <= order.maxPrice and order.duration <= bid.maxDuration,
/// within each order's units, each bid's capacity, each provider's available stake (in units) and
/// each buyer's available escrow (a match costs floor(units * p * duration / 3600), as settle
/// locks it). Maximizes gains from trade: sum of units * duration * (maxPrice - bid price).
library ExactClearing {
    struct Instance {
        uint256 n;
        uint256 m;
        uint256[3] oLeft;
        uint256[3] oDur;
        uint256[3] oMax;
        uint256[3] oBuyer;
        uint256[3] bLeft;
        uint256[3] bPrice;
        uint256[3] bMaxDur;
        uint256[3] bProv;
        uint256[3] escrow;
        uint256[3] stakeUnits;
        // search state
        uint256 p;
        uint256 gains;
        uint256[9] x;
        // result
        uint256 bestGains;
        uint256 bestP;
        uint256[9] bestX;
    }

    function solve(Instance memory inst) internal pure {
        for (uint256 b; b < inst.m; ++b) {
            uint256 p = inst.bPrice[b];
            bool seen;
            for (uint256 c; c < b; ++c) {
                if (inst.bPrice[c] == p) seen = true;
            }
            if (seen) continue;
            inst.p = p;
            inst.gains = 0;
            _dfs(inst, 0);
        }
    }

    function _dfs(Instance memory I, uint256 k) private pure {
        if (k == I.n * I.m) {
            if (I.gains > I.bestGains) {
                I.bestGains = I.gains;
                I.bestP = I.p;
                // element-wise: `I.bestX = I.x` would alias the two memory arrays
                for (uint256 i; i < 9; ++i) {
                    I.bestX[i] = I.x[i];
                }
            }
            return;
        }
        uint256 o = k / I.m;
        uint256 b = k % I.m;
        uint256 maxX;
        if (I.bPrice[b] <= I.p && I.oMax[o] >= I.p && I.oDur[o] <= I.bMaxDur[b]) {
            maxX = I.oLeft[o];
            if (I.bLeft[b] < maxX) maxX = I.bLeft[b];
            if (I.stakeUnits[I.bProv[b]] < maxX) maxX = I.stakeUnits[I.bProv[b]];
        }
        uint256 unitGain = I.oDur[o] * (I.oMax[o] - (I.bPrice[b] <= I.oMax[o] ? I.bPrice[b] : I.oMax[o]));
        for (uint256 x; x <= maxX; ++x) {
            uint256 cost = x * I.p * I.oDur[o] / 3600;
            uint256 buyer = I.oBuyer[o];
            if (cost > I.escrow[buyer]) break;
            uint256 prov = I.bProv[b];
            I.oLeft[o] -= x;
            I.bLeft[b] -= x;
            I.stakeUnits[prov] -= x;
            I.escrow[buyer] -= cost;
            I.gains += x * unitGain;
            I.x[k] = x;
            _dfs(I, k + 1);
            I.oLeft[o] += x;
            I.bLeft[b] += x;
            I.stakeUnits[prov] += x;
            I.escrow[buyer] += cost;
            I.gains -= x * unitGain;
            I.x[k] = 0;
        }
    }
}
