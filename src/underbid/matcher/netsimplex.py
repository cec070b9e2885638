"""A compiled network simplex for the clearing's small min-cost flows.

The solver is ``netsimplex.c`` (why it exists, and how it stays exact, is in its header): a
primal network simplex whose time depends on the number of pivots, not on the range of the
costs, unlike OR-Tools' cost scaling, which spends most of a small clearing graph's solve in
one refine phase per factor of the cost range.  It is compiled on first use with the system's
C compiler (``$CC``, else ``cc``) into a cache directory (``$UNDERBID_NATIVE_DIR``, else
``$XDG_CACHE_HOME/underbid`` or ``~/.cache/underbid``), under a name that carries a hash of the
source, so an edited source is rebuilt and concurrent first uses (test workers) each write
their own temporary file and rename it into place.  ``scripts/setup.sh`` builds it.

Without a compiler :func:`solve` returns None and the clearing uses OR-Tools for every graph:
the same optimum, but among tied optima not always the same allocation.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from enum import IntEnum
from pathlib import Path

import numpy as np

__all__ = ["Status", "available", "build", "solve"]

_SOURCE = Path(__file__).with_name("netsimplex.c")
_FLAGS = ("-O2", "-shared", "-fPIC", "-std=gnu11")
# Pivots per node and arc before the solver gives up and the caller solves otherwise (measured:
# under one pivot per arc on every clearing graph of the benchmarks); a bound on the worst case.
_PIVOTS_PER_ELEMENT = 50


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


@functools.cache
def _function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]  # ctypes' private base class
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        warnings.warn(f"the compiled network simplex is unavailable ({error}); clearing uses OR-Tools alone",
                      RuntimeWarning, stacklevel=3)
        return None
    function = library.ns_min_cost_flow
    function.argtypes = [ctypes.c_int32, ctypes.c_int32, _I32, _I32, _I64, _I64, ctypes.c_int32,
                         ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, _I64]
    function.restype = ctypes.c_int
    return function


def available() -> bool:
    """Whether the compiled solver is built and loaded (building it on first call)."""
    return _function() is not None


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
    function = _function()
    if function is None:
        raise RuntimeError("the compiled network simplex is not available")
    n_arcs = int(tails.size)
    if max_pivots is None:
        max_pivots = _PIVOTS_PER_ELEMENT * (n_nodes + n_arcs) + 1_000
    flows = np.empty(n_arcs, np.int64)
    status = Status(function(n_nodes, n_arcs, np.ascontiguousarray(tails, np.int32),
                             np.ascontiguousarray(heads, np.int32), np.ascontiguousarray(caps, np.int64),
                             np.ascontiguousarray(costs, np.int64), source, sink, supply, max_pivots, flows))
    return status, flows if status is Status.OPTIMAL else None


def solve(
    n_nodes: int, tails: np.ndarray, heads: np.ndarray, caps: np.ndarray, costs: np.ndarray,
    source: int, sink: int, supply: int,
) -> np.ndarray | None:
    """A min-cost flow (see :func:`solve_status`), or None when the solver is not available or
    did not reach OPTIMAL (the caller then solves with OR-Tools)."""
    if _function() is None:
        return None
    return solve_status(n_nodes, tails, heads, caps, costs, source, sink, supply)[1]
