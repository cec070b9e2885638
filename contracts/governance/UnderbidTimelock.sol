// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";

/// @title The admin of the Underbid contracts: OpenZeppelin's timelock, unchanged.
/// @dev Deployments give it `DEFAULT_ADMIN_ROLE` on the core, the BME and the oracle, so every
/// parameter change is scheduled in public at least `minDelay` before it can be executed, and
/// leases keep the parameters they opened under even then.
contract UnderbidTimelock is TimelockController {
    /// @param minDelay Seconds between scheduling and executing an operation.
    /// @param proposers Accounts that may schedule (and cancel) operations.
    /// @param executors Accounts that may execute them once ready (`address(0)`: anyone).
    /// @param admin An optional admin for setting up roles; `address(0)` for none.
    constructor(uint256 minDelay, address[] memory proposers, address[] memory executors, address admin)
        TimelockController(minDelay, proposers, executors, admin)
    {}
}
