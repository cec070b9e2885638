"""A compiled network simplex for the clearing's small min-cost flows.

The solver is ``netsimplex.c`` (why it exists, and how it stays exact, is in its header): a
primal network simplex whose time depends on the number of pivots, not on the range of the
costs, unlike OR-Tools' cost scaling, which spends most of a small clearing graph's solve in
one refine phase per factor of the cost range.  It is compiled on first use with the system's
C compiler (``$CC``, else ``cc``) into a cache directory (``$UNDERBID_NATIVE_DIR``, else
``$XDG_CACHE_HOME/underbid`` or ``~/.cache/underbid``), under a name that carries a hash of the
source, so an edited source is rebuilt and concurrent first uses (test workers) each write
their own temporary file and rename it into place.  ``scripts/setup.sh`` builds it.

The clearing needs it (:func:`require`): OR-Tools, its solver for bigger graphs, breaks ties
among optimal allocations differently, and a tie can decide the uniform price, so a machine
that cleared on OR-Tools alone would not recompute the same round.  The matcher checks it at
start.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Graph", "Status", "available", "build", "require", "solve_many", "solve_status"]

_SOURCE = Path(__file__).with_name("netsimplex.c")
_FLAGS = ("-O2", "-shared", "-fPIC", "-std=gnu11")
# Pivots per node and arc before the solver gives up and the caller solves otherwise: a bound on
# the worst case, 7x the most measured (0.70 per node and arc on the 1k x 10k round's graphs, 0.37
# at 10k x 100k).
_PIVOTS_PER_ELEMENT = 5


class Status(IntEnum):
    """What ``ns_min_cost_flow`` returns (the ``NS_*`` codes of netsimplex.c)."""

    OPTIMAL = 0
    INFEASIBLE = 1
    BAD_INPUT = 2
    GAVE_UP = 3
    NO_MEMORY = 4


def _cache_dir() -> Path:
    configured = os.environ.get("UNDERBID_NATIVE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "underbid"


def _library_path() -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    return _cache_dir() / f"netsimplex-{digest}.so"


def build() -> Path:
    """Compile the solver if its library is not built yet, and return the library's path.

    Raises ``RuntimeError`` naming the compiler and its first error line when it cannot.
    """
    path = _library_path()
    if path.exists():
        return path
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler: {compiler!r} is not on PATH (set CC)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *_FLAGS, "-o", temporary, str(_SOURCE)],
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            first_line = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise RuntimeError(f"{compiler} failed on {_SOURCE.name}: {first_line}")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


_I32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_I64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_U8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _number(name: str, value: int, bounds: tuple[int, int]) -> int:
    """``value`` as an int within ``bounds`` (ctypes would wrap it silently), else ValueError."""
    number = int(value)
    if not bounds[0] <= number <= bounds[1]:
        raise ValueError(f"network simplex: {name} {number} is out of range")
    return number


def _array(name: str, values: np.ndarray, dtype: type) -> np.ndarray:
    """``values`` as a contiguous 1-D array of ``dtype``, refusing what the cast would wrap."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"network simplex: {name} must be a 1-D integer array")
    if array.dtype != dtype and array.size:
        info: np.iinfo[Any] = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise ValueError(f"network simplex: {name} has values out of range")
    return np.ascontiguousarray(array, dtype)


def _arcs(tails: np.ndarray, heads: np.ndarray, caps: np.ndarray,
          costs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arc arrays as the C code takes them; ValueError unless all have the same length (the
    C code reads ``tails.size`` entries of each)."""
    arrays = (_array("tails", tails, np.int32), _array("heads", heads, np.int32),
              _array("caps", caps, np.int64), _array("costs", costs, np.int64))
    if len({a.size for a in arrays}) != 1:
        raise ValueError("network simplex: tails, heads, caps and costs must have the same length")
    return arrays


def _library() -> ctypes.CDLL | None:
    return _load()[0]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The loaded library, or None and why it could not be loaded (tried once per process)."""
    try:
        try:
            library = ctypes.CDLL(str(build()))
        except OSError:
            # A cached library that does not load (truncated, overwritten): built again once,
            # or no process here could clear until someone deleted it.
            _library_path().unlink(missing_ok=True)
            library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        return None, str(error)
    graph_args: list[type] = [ctypes.c_int32, ctypes.c_int32, _I32, _I32, _I64, _I64, ctypes.c_int32,
                              ctypes.c_int32, ctypes.c_int64]
    library.ns_min_cost_flow.argtypes = [*graph_args, ctypes.c_int64, _I64]
    library.ns_min_cost_flow.restype = ctypes.c_int
    library.ns_min_cost_flow_many.argtypes = [ctypes.c_int32, _I32, _I64, _I32, _I32, _I64, _I64, ctypes.c_int32,
                                              ctypes.c_int32, _I64, ctypes.c_int64, _I64, _I32]
    library.ns_min_cost_flow_many.restype = None
    library.ns_new.argtypes = [*graph_args, ctypes.POINTER(ctypes.c_int)]
    library.ns_new.restype = ctypes.c_void_p
    library.ns_run.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    library.ns_run.restype = ctypes.c_int
    library.ns_flows.argtypes = [ctypes.c_void_p, _I64]
    library.ns_flows.restype = None
    library.ns_reprice.argtypes = [ctypes.c_void_p, _U8]
    library.ns_reprice.restype = ctypes.c_int
    library.ns_free.argtypes = [ctypes.c_void_p]
    library.ns_free.restype = None
    return library, ""


def available() -> bool:
    """Whether the compiled solver is built and loaded (building it on first call)."""
    return _library() is not None


def require() -> None:
    """Build and load the solver if need be; ``RuntimeError`` saying why when it cannot."""
    library, reason = _load()
    if library is None:
        raise RuntimeError(f"the clearing needs its compiled network simplex, which is unavailable ({reason}); "
                           "run scripts/setup.sh, or set CC to a C compiler")


def _default_pivots(n_nodes: int, n_arcs: int) -> int:
    return _PIVOTS_PER_ELEMENT * (n_nodes + n_arcs) + 1_000


class Graph:
    """One graph kept in the solver, to be solved again from its last optimum (a warm start)
    after some arcs are forbidden (:meth:`forbid`): what a clearing's trial price is to its
    max-gain graph.  Use as a context manager, or :meth:`close` it.

    Raises ``RuntimeError`` when the solver is not available, ``ValueError`` for a graph the
    solver refuses (an arc out of range, a loop, a negative capacity or supply).
    """

    def __init__(self, n_nodes: int, tails: np.ndarray, heads: np.ndarray, caps: np.ndarray,
                 costs: np.ndarray, source: int, sink: int, supply: int) -> None:
        self._handle: int | None = None  # (set first: __del__ runs even when __init__ raises)
        library = _library()
        if library is None:
            raise RuntimeError("the compiled network simplex is not available")
        self._library = library
        tails, heads, caps, costs = _arcs(tails, heads, caps, costs)
        self.n_arcs = int(tails.size)
        self._max_pivots = _default_pivots(n_nodes, self.n_arcs)
        status = ctypes.c_int(0)
        handle = library.ns_new(_number("n_nodes", n_nodes, _INT32), self.n_arcs, tails, heads, caps, costs,
                                _number("source", source, _INT32), _number("sink", sink, _INT32),
                                _number("supply", supply, _INT64), ctypes.byref(status))
        if not handle:
            if Status(status.value) is Status.NO_MEMORY:
                raise MemoryError("network simplex: out of memory")
            raise ValueError("network simplex: bad graph (an arc out of range, a loop, a negative "
                             "capacity or supply, or over 2^24 nodes or 2^30 arcs)")
        self._handle = handle

    def solve(self, max_pivots: int | None = None) -> tuple[Status, np.ndarray | None]:
        """Pivot to an optimum from where the graph is: the status, and the flow when OPTIMAL."""
        handle = self._live()
        pivots = self._max_pivots if max_pivots is None else _number("max_pivots", max_pivots, _INT64)
        status = Status(self._library.ns_run(handle, pivots))
        if status is not Status.OPTIMAL:
            return status, None
        flows = np.empty(self.n_arcs, np.int64)
        self._library.ns_flows(handle, flows)
        return status, flows

    def forbid(self, forbidden: np.ndarray) -> None:
        """From now on the arcs where ``forbidden`` (bool, one per arc) is set cost more than any
        gain (the caller's costs otherwise, whatever was forbidden before): an optimum carries
        no flow on them when any feasible flow can avoid them."""
        if forbidden.shape != (self.n_arcs,):
            raise ValueError(f"forbid: one flag per arc ({self.n_arcs}), got shape {forbidden.shape}")
        if Status(self._library.ns_reprice(self._live(), np.ascontiguousarray(forbidden, np.uint8))) \
                is not Status.OPTIMAL:
            raise MemoryError("network simplex: out of memory")

    def close(self) -> None:
        if self._handle is not None:
            self._library.ns_free(self._handle)
            self._handle = None

    def _live(self) -> int:
        if self._handle is None:
            raise ValueError("network simplex: the graph is closed")
        return self._handle

    def __copy__(self) -> Graph:
        raise TypeError("a network simplex Graph cannot be copied (the copy would share, and free, its C graph)")

    def __deepcopy__(self, memo: object) -> Graph:
        return self.__copy__()

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a network simplex Graph cannot be copied or pickled (it holds a C graph)")

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def solve_status(
    n_nodes: int, tails: np.ndarray, heads: np.ndarray, caps: np.ndarray, costs: np.ndarray,
    source: int, sink: int, supply: int, max_pivots: int | None = None,
) -> tuple[Status, np.ndarray | None]:
    """The solver's status and, when OPTIMAL, a min-cost flow of ``supply`` units from
    ``source`` to ``sink`` (one value per arc, int64).

    ``tails`` and ``heads`` are int32 node numbers below ``n_nodes``, ``caps`` (>= 0) and
    ``costs`` int64, all of one length.  ``max_pivots`` defaults to a multiple of the graph's
    size, past which the status is GAVE_UP.  Raises ``RuntimeError`` when the solver is not
    available (see :func:`available`).
    """
    library = _library()
    if library is None:
        raise RuntimeError("the compiled network simplex is not available")
    tails, heads, caps, costs = _arcs(tails, heads, caps, costs)
    n_arcs = int(tails.size)
    if max_pivots is None:
        max_pivots = _default_pivots(n_nodes, n_arcs)
    flows = np.empty(n_arcs, np.int64)
    status = Status(library.ns_min_cost_flow(
        _number("n_nodes", n_nodes, _INT32), _number("n_arcs", n_arcs, _INT32), tails, heads, caps, costs,
        _number("source", source, _INT32), _number("sink", sink, _INT32), _number("supply", supply, _INT64),
        _number("max_pivots", max_pivots, _INT64), flows))
    return status, flows if status is Status.OPTIMAL else None


def solve_many(
    node_counts: np.ndarray, arc_starts: np.ndarray, tails: np.ndarray, heads: np.ndarray, caps: np.ndarray,
    costs: np.ndarray, source: int, sink: int, supplies: np.ndarray,
) -> tuple[list[Status], np.ndarray] | None:
    """:func:`solve_status` of several graphs in one call: graph m has ``node_counts[m]`` nodes
    and the arcs ``arc_starts[m]:arc_starts[m + 1]`` of the arrays (node numbers its own), the
    same source and sink, and ``supplies[m]`` units.  Returns each graph's status and the flows
    of all arcs (meaningful for the OPTIMAL graphs), or None when the solver is not available.
    One call for a batch of small graphs: per graph, ctypes' argument conversion cost as much
    as the solve."""
    library = _library()
    if library is None:
        return None
    count = int(node_counts.size)
    if arc_starts.shape != (count + 1,) or supplies.shape != (count,):
        raise ValueError("solve_many: arc_starts needs one more entry than node_counts, supplies as many")
    tails, heads, caps, costs = _arcs(tails, heads, caps, costs)
    starts = _array("arc_starts", arc_starts, np.int64)
    # The C code reads and writes each graph's slice of the arrays: every slice within them.
    if starts[0] < 0 or starts[-1] > tails.size or (np.diff(starts) < 0).any():
        raise ValueError("solve_many: arc_starts must be nondecreasing, from 0 up to the number of arcs")
    flows = np.zeros(int(tails.size), np.int64)
    statuses = np.empty(count, np.int32)
    library.ns_min_cost_flow_many(
        _number("count", count, _INT32), _array("node_counts", node_counts, np.int32), starts, tails, heads, caps,
        costs, _number("source", source, _INT32), _number("sink", sink, _INT32),
        _array("supplies", supplies, np.int64), _PIVOTS_PER_ELEMENT, flows, statuses)
    return [Status(int(code)) for code in statuses], flows
