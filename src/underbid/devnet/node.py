"""Local devnet: the well-known test keys, and `underbid devnet up|down|status|fund|advance`.

`up` starts anvil (from the npm package), deploys with `ape run deploy` against that anvil, funds
the demo accounts with UBT, starts a matcher in the background, and records pids, URLs and the
matcher's admin token in `.underbid/devnet.json`. `down` stops both processes by their recorded ids.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

#: anvil's and ape's default test mnemonic. These keys are public: devnet use only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_RPC = "http://127.0.0.1:8545"
DEV_MATCHER_URL = "http://127.0.0.1:8700"
DEV_CHAIN_ID = 31337
#: Account roles on the devnet, by index (ape's test accounts follow the same order).
DEPLOYER, MATCHER = 0, 1
PROVIDERS = (2, 3, 4, 5, 6)
BUYERS = (7, 8, 9)
REPORTER = 10
#: Demo accounts `devnet up` gives UBT to, and how much each.
FUNDED = (*PROVIDERS, *BUYERS, REPORTER)
FUND_UBT = 5_000 * 10**18
ANVIL_ACCOUNTS = 20


@cache
def dev_account(index: int) -> LocalAccount:
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


#: The addresses of the first `ANVIL_ACCOUNTS` keys of `DEV_MNEMONIC` (`dev_account(0..19)`; listed,
#: not derived, as deriving them costs ~85 ms a command; tests/cli/test_dev_keys.py checks the list).
DEV_ADDRESSES = frozenset((
    "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
    "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
    "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
    "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
    "0x15d34aaf54267db7d7c367839aaf71a00a2c6a65",
    "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc",
    "0x976ea74026e726554db657fa54763abd0c3a0aa9",
    "0x14dc79964da2c08b23698b3d3cc7ca32193d9955",
    "0x23618e81e3f5cdf7f54c3d65f7fbc0abf5b21e8f",
    "0xa0ee7a142d267c1f36714e4a8f75612f20a79720",
    "0xbcd4042de499d14e55001ccbb24a551f3b954096",
    "0x71be63f3384f5fb98995898a86b02fb2426c5788",
    "0xfabb0ac9d68b0b445fb7357272ff202c5651694a",
    "0x1cbd3b2770909d4e10f157cabc84c7264073c9ec",
    "0xdf3e18d64bc6a983f673ab319ccae4f1a57c7097",
    "0xcd3b766ccdd6ae721141f452c550ca635964ce71",
    "0x2546bcd3c84621e976d8185a91a922ae77ecec30",
    "0xbda5747bfd65f08deb54cb465eb87d40e51b197e",
    "0xdd2fd4581271e230360230f9337d5c0430bf44c0",
    "0x8626f6940e2eb28930efb4cef49b2d1f2c9c1199",
))


def is_dev_address(address: str) -> bool:
    """True if `address` is one of the devnet's public dev keys (the first `ANVIL_ACCOUNTS` of
    `DEV_MNEMONIC`) however it is supplied: `dev:<n>`, but also `env:<VAR>`, a keystore it was
    imported into, or the matcher's `$UNDERBID_MATCHER_KEY`. Anyone holds those keys, so each of
    these is refused off a devnet like `dev:<n>`."""
    return address.lower() in DEV_ADDRESSES


class DevnetError(Exception):
    """A one-line devnet error."""


# ----- where things are -----


def project_root() -> Path | None:
    """The Underbid checkout (it holds ape-config.yaml and contracts/), from the cwd or this package."""
    candidates = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]]
    for base in candidates:
        if (base / "ape-config.yaml").is_file() and (base / "contracts").is_dir():
            return base
    return None


def devnet_dir() -> Path:
    env = os.environ.get("UNDERBID_DEVNET_DIR")
    if env:
        return Path(env).resolve()
    root = project_root()
    return (root or Path.cwd()) / ".underbid"


def state_path(directory: Path | None = None) -> Path:
    return (directory or devnet_dir()) / "devnet.json"


class UpOutcome(StrEnum):
    """What `up` did: started a devnet, or restarted the dead matcher of a recorded one."""

    STARTED = "started"
    RESTARTED_MATCHER = "restarted matcher"


@dataclass
class DevnetState:
    rpc: str
    port: int
    chain_id: int
    deployment: str
    matcher_url: str
    admin_token: str
    anvil_pid: int
    matcher_pid: int
    logs: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: Kept so that a restarted matcher closes rounds as the first one did (older state files: 0).
    round_seconds: float = 0
    #: What the last `up` did with this devnet.
    outcome: UpOutcome = UpOutcome.STARTED

    def __post_init__(self) -> None:
        self.outcome = UpOutcome(self.outcome)  # a state file holds the value

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the admin token
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=2)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | None = None) -> DevnetState | None:
        path = path or state_path()
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def alive(self) -> dict[str, bool]:
        return {"anvil": _alive(self.anvil_pid, "anvil"), "matcher": _alive(self.matcher_pid, "underbid")}


# ----- processes -----


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, needle: str) -> bool:
    """True if `pid` runs and its command line mentions `needle` (a reused pid is not ours)."""
    if pid <= 0:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = _cmdline(pid)
    return needle in cmdline if cmdline else True


def stop_process(pid: int, needle: str, timeout: float = 15.0) -> bool:
    """Stops the process group led by `pid` (started by `up` in its own session). True if it was running."""
    if not _alive(pid, needle):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, needle):
                _wait_group_gone(pid, deadline)
                return True
            time.sleep(0.1)
    return True


def _wait_group_gone(pgid: int, deadline: float) -> None:
    """Waits until no process of the group is left: the leader can exit before a member that
    still holds a listening socket, and callers expect the devnet's ports free on return."""
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_anvil() -> str:
    root = project_root()
    if root and (root / "node_modules/.bin/anvil").exists():
        return str(root / "node_modules/.bin/anvil")
    found = shutil.which("anvil")
    if not found:
        raise DevnetError("anvil not found: run `bash scripts/setup.sh` (it installs anvil from npm)")
    return found


def find_ape() -> str:
    local = Path(sys.executable).parent / "ape"
    if local.exists():
        return str(local)
    found = shutil.which("ape")
    if not found:
        raise DevnetError("ape not found: run `bash scripts/setup.sh`")
    return found


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(check: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevnetError(f"{what} exited with code {proc.returncode}; see {log}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.2)
    raise DevnetError(f"{what} did not come up within {timeout:.0f} s; see {log}")


def _rpc_answers(url: str) -> bool:
    import httpx

    try:
        r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
        return r.status_code == 200 and "result" in r.json()
    except (httpx.HTTPError, ValueError):
        return False


def _health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_anvil(port: int, log: Path, *, chain_id: int = DEV_CHAIN_ID, mnemonic: str = DEV_MNEMONIC,
                block_time: float | None = None) -> subprocess.Popen:
    """Starts anvil on `port` and waits until it answers; the devnet's by default. Another chain id,
    mnemonic and a block time make it stand in for a public chain (the tests' "remote" chain)."""
    cmd = [find_anvil(), "--host", "127.0.0.1", "--port", str(port), "--mnemonic", mnemonic,
           "--accounts", str(ANVIL_ACCOUNTS), "--balance", "10000", "--chain-id", str(chain_id)]
    if block_time is not None:
        cmd += ["--block-time", f"{block_time:g}"]
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    _wait(lambda: _rpc_answers(f"http://127.0.0.1:{port}"), proc, "anvil", log, 30)
    return proc


def deploy(rpc: str, out: Path, log: Path) -> None:
    """`ape run deploy` against the running anvil at `rpc` (APE_FOUNDRY_HOST makes ape connect to it)."""
    root = project_root()
    if root is None:
        raise DevnetError("cannot find the Underbid project (ape-config.yaml, contracts/) to deploy from")
    env = {**os.environ, "APE_FOUNDRY_HOST": rpc}
    cmd = [find_ape(), "run", "deploy", "--network", "ethereum:local:foundry", "--out", str(out)]
    with log.open("wb") as out_log:
        done = subprocess.run(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out_log,
                              stderr=subprocess.STDOUT, timeout=600)
    if done.returncode != 0 or not out.exists():
        raise DevnetError(f"deployment failed (exit {done.returncode}); see {log}:\n{_tail(log)}")


def start_matcher(rpc: str, deployment: Path, db: Path, port: int, token: str, log: Path,
                  round_seconds: float = 0, *, fresh_store: bool = True) -> subprocess.Popen:
    """Starts `underbid matcher run` for the devnet and waits until it answers `/health`.

    `fresh_store=False` keeps the store: a matcher restarted on the same chain reconciles its
    rounds with the chain from it, as after any crash, so nothing it acknowledged is lost.
    """
    if fresh_store:
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)  # a fresh chain needs a fresh store
    cmd = [sys.executable, "-m", "underbid.cli", "matcher", "run", "--dev", "--rpc", rpc,
           "--deployment", str(deployment), "--db", str(db), "--port", str(port),
           "--round-seconds", str(round_seconds), "--admin-token", token]
    # The devnet's matcher runs on the devnet whatever network the caller's shell names.
    env = {k: v for k, v in os.environ.items()
           if k not in ("UNDERBID_MATCHER_KEY", "UNDERBID_FAILPOINT", "UNDERBID_NETWORK")}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    _wait(lambda: _health(f"http://127.0.0.1:{port}"), proc, "the matcher", log, 60)
    return proc


def fund_ubt(rpc: str, deployment: Path, indexes: tuple[int, ...] = FUNDED, amount: int = FUND_UBT) -> None:
    """Sends `amount` UBT from the deployer to each dev account in `indexes`."""
    from underbid.client.session import Client

    client = Client(rpc, deployment, dev_account(DEPLOYER))
    for index in indexes:
        client.transact(client.ubt.functions.transfer(dev_account(index).address, amount), f"fund dev:{index}")


def up(*, port: int = 8545, matcher_port: int = 8700, directory: Path | None = None, round_seconds: float = 0,
       progress: Callable[[str], None] = lambda _: None) -> DevnetState:
    """Starts anvil, deploys, funds the demo accounts and starts the matcher. Returns the saved state."""
    explicit = directory is not None or bool(os.environ.get("UNDERBID_DEVNET_DIR"))
    directory = (directory or devnet_dir()).resolve()
    path = state_path(directory)
    existing = DevnetState.load(path)
    if existing is not None:
        alive = existing.alive()
        if all(alive.values()):
            raise DevnetError(f"a devnet is already up at {existing.rpc}, matcher {existing.matcher_url} "
                              f"(state {path}): use it, or `underbid devnet down` first")
        if alive["anvil"]:
            return _restart_matcher(existing, path, progress)
        # anvil keeps its chain in memory: with it gone, the recorded contracts and the matcher's
        # store describe a chain that no longer exists, so the devnet starts afresh.
        if alive["matcher"]:
            progress("the recorded devnet's anvil is gone: stopping its matcher")
            stop_process(existing.matcher_pid, "underbid")
        path.unlink(missing_ok=True)
        progress("the recorded devnet's anvil is gone (and its chain with it): starting a fresh devnet")
    for p, what in ((port, "anvil"), (matcher_port, "the matcher")):
        if port_in_use(p):
            raise DevnetError(
                f"port {p} for {what} is in use: stop what runs there or pick another (--port/--matcher-port)"
            )
    root = project_root()
    # The project's address book (what `ape run deploy` writes), unless the devnet lives elsewhere.
    deployment = directory / "local.json" if explicit or root is None else root / "deployments/local.json"
    logs = {"anvil": directory / "anvil.log", "deploy": directory / "deploy.log", "matcher": directory / "matcher.log"}
    rpc = f"http://127.0.0.1:{port}"
    token = secrets.token_urlsafe(24)
    progress(f"starting anvil on port {port}")
    anvil = start_anvil(port, logs["anvil"])
    matcher = None
    try:
        progress("deploying the contracts (ape run deploy)")
        deploy(rpc, deployment, logs["deploy"])
        progress("funding the demo accounts with UBT")
        fund_ubt(rpc, deployment)
        progress(f"starting the matcher on port {matcher_port}")
        matcher = start_matcher(rpc, deployment, directory / "devnet-matcher.db", matcher_port, token,
                                logs["matcher"], round_seconds)
    except BaseException:
        if matcher is not None:
            stop_process(matcher.pid, "underbid")
        stop_process(anvil.pid, "anvil")
        raise
    state = DevnetState(rpc=rpc, port=port, chain_id=DEV_CHAIN_ID, deployment=str(deployment.resolve()),
                        matcher_url=f"http://127.0.0.1:{matcher_port}", admin_token=token,
                        anvil_pid=anvil.pid, matcher_pid=matcher.pid, logs={k: str(v) for k, v in logs.items()},
                        round_seconds=round_seconds, outcome=UpOutcome.STARTED)
    state.save(path)
    return state


def _restart_matcher(state: DevnetState, path: Path, progress: Callable[[str], None]) -> DevnetState:
    """Starts the recorded devnet's dead matcher again: same port, admin token and store."""
    matcher_port = int(state.matcher_url.rsplit(":", 1)[1])
    if port_in_use(matcher_port):
        raise DevnetError(f"the devnet's matcher is not running, but its port {matcher_port} is in use: "
                          "stop what runs there, or `underbid devnet down` and start afresh")
    directory = path.parent
    log = Path(state.logs.get("matcher", str(directory / "matcher.log")))
    progress(f"the devnet's matcher is not running: restarting it on port {matcher_port} with its store")
    matcher = start_matcher(state.rpc, Path(state.deployment), directory / "devnet-matcher.db", matcher_port,
                            state.admin_token, log, state.round_seconds, fresh_store=False)
    state.matcher_pid = matcher.pid
    state.outcome = UpOutcome.RESTARTED_MATCHER
    state.save(path)
    return state


def down(directory: Path | None = None) -> dict[str, bool] | None:
    """Stops the recorded matcher and anvil. Returns which were running, or None if no devnet is recorded."""
    path = state_path(directory)
    state = DevnetState.load(path)
    if state is None:
        return None
    stopped = {"matcher": stop_process(state.matcher_pid, "underbid"), "anvil": stop_process(state.anvil_pid, "anvil")}
    path.unlink(missing_ok=True)
    return stopped


# ----- time travel and faucet (local chains only) -----


def devnet_refusal(w3, book) -> str | None:
    """Why the chain behind `w3` is not a local devnet, or None if it is one.

    A devnet is all of: an address book deployed from the public dev keys (`book.devnet`), the
    devnet chain id, and a node that is anvil or hardhat (the only ones with time travel). The
    chain id alone would not do: anvil serves any chain id, and a public chain could reuse 31337.
    """
    if not book.devnet:
        return f"its address book ({book.network}) was not deployed from the devnet's dev keys"
    chain_id = int(w3.eth.chain_id)
    if chain_id != DEV_CHAIN_ID:
        return f"the node is chain {chain_id}, a devnet is chain {DEV_CHAIN_ID}"
    from underbid.chain.retry import TRANSIENT

    try:
        version = str(w3.client_version)
    except TRANSIENT:
        raise  # a node not answering yet is waited for (the matcher's start-up retries), not judged
    except Exception:  # noqa: BLE001 - a node that does not say what it is is not a known devnet node
        version = ""
    if not any(name in version.lower() for name in ("anvil", "hardhat")):
        return f"the node ({version or 'unnamed'}) is not anvil or hardhat"
    return None


def require_devnet(client, what: str) -> None:
    """Raises DevnetError (one line) unless `client` is on a local devnet; `what` names the refused thing."""
    if getattr(client, "_devnet_ok", False):
        return
    reason = devnet_refusal(client.w3, client.book)
    if reason is not None:
        raise DevnetError(
            f"{what} works only on a local devnet; {client.book.network} (chain {client.book.chain_id})"
            f" is not one: {reason}"
        )
    client._devnet_ok = True  # a client stays on one chain: checked once


def advance(client, seconds: int, *, repost_price: bool = True) -> int:
    """Moves the chain's clock forward `seconds` and mines a block; re-posts the oracle price (the
    deployer is the devnet's updater) so minting and redeeming keep working. Returns the new time."""
    require_devnet(client, "time travel (`devnet advance`)")
    w3 = client.w3
    if seconds > 0:
        w3.provider.make_request("evm_increaseTime", [int(seconds)])
    w3.provider.make_request("evm_mine", [])
    if repost_price:
        repost_oracle_price(client)
    return int(w3.eth.get_block("latest")["timestamp"])


def repost_oracle_price(client) -> None:
    require_devnet(client, "re-posting the oracle price as the dev deployer")
    price, _ = client.oracle.functions.lastPosted().call()
    if not price:
        return
    updater = client.with_account(dev_account(DEPLOYER))
    updater.transact(updater.oracle.functions.setPrice(price), "re-post the oracle price")


def fund(client, address: str, *, eth: int = 0, ubt: int = 0) -> None:
    """Devnet faucet: sets ETH with anvil_setBalance (adds `eth`) and sends UBT from the deployer."""
    require_devnet(client, "the faucet (`devnet fund`)")
    if eth:
        balance = client.w3.eth.get_balance(address)
        client.w3.provider.make_request("anvil_setBalance", [address, hex(balance + eth)])
    if ubt:
        deployer = client.with_account(dev_account(DEPLOYER))
        have = deployer.ubt_balance(deployer.address)
        if have < ubt:
            raise DevnetError("the deployer holds too little UBT to fund that")
        deployer.transact(deployer.ubt.functions.transfer(address, ubt), "send UBT from the deployer")
