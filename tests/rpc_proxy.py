"""A fault-injecting JSON-RPC proxy in front of a node (anvil), for tests.

A real HTTP server on 127.0.0.1 in a daemon thread. Every POST is handled according to the
proxy's current mode, which a test switches at run time:

    with RpcProxy(chain.provider.uri) as proxy:       # or RpcProxy(upstream, port=p) for a fixed port
        start_something(rpc=proxy.url)
        proxy.set("stall")                            # every request from now on hangs
        proxy.set("drop", methods={"eth_sendRawTransaction"}, times=1)   # only the next such one
        proxy.set("slow", delay_ms=800)
        proxy.set("pass")
        proxy.seen                                    # JSON-RPC methods received, in order

Modes:
- "pass":  forward to the upstream node and return its answer.
- "slow":  wait `delay_ms`, then as "pass".
- "stall": accept the request and never answer: the connection is held open (not forwarded)
           until the proxy closes or `max_stall` seconds pass, then closed without an answer.
- "drop":  forward to the upstream node (so a transaction does land), then close the connection
           without answering: the answer is lost.
- "reset": close the connection with a TCP reset, without forwarding.

`methods` limits a fault to requests carrying one of those JSON-RPC methods (a batch matches if
any of its calls does); other requests pass. `times` applies the fault to that many matching
requests, after which the proxy is back in "pass". A mode change applies to requests arriving
after it; requests already stalled stay stalled.

Bounded in time: the proxy stops by itself after `lifetime` seconds (default 15 minutes), and
`close()` (or leaving the `with` block) stops it and releases every stalled request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("pass", "slow", "stall", "drop", "reset")


class RpcProxy:
    def __init__(self, upstream: str, *, port: int = 0, lifetime: float = 900.0, max_stall: float = 300.0):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.upstream_path = parts.path or "/"
        self.max_stall = max_stall
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._mode = "pass"
        self._delay = 0.0
        self._methods: frozenset[str] | None = None
        self._times: int | None = None
        self._closed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                proxy._handle(self)

            def log_message(self, *args) -> None:
                pass

            def finish(self) -> None:
                with contextlib.suppress(OSError, ValueError):  # dropped or reset on purpose
                    super().finish()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address) -> None:
                pass

        self._server = Server(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    # ----- control -----

    def set(
        self, mode: str, *, delay_ms: float = 0, methods: Iterable[str] | None = None, times: int | None = None
    ) -> None:
        """Switches the mode for requests arriving from now on (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._lock:
            self._mode, self._delay = mode, delay_ms / 1000
            self._methods = frozenset(methods) if methods is not None else None
            self._times = times

    @property
    def mode(self) -> str:
        return self._mode

    def close(self) -> None:
        """Stops the proxy and releases stalled requests (closed without an answer)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RpcProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- handling one request -----

    def _decide(self, methods: list[str]) -> tuple[str, float]:
        with self._lock:
            self.seen.extend(methods)
            mode, delay = self._mode, self._delay
            if mode == "pass":
                return mode, delay
            if self._methods is not None and not self._methods.intersection(methods):
                return "pass", 0.0
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode, self._methods, self._times = "pass", None, None
            return mode, delay

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        mode, delay = self._decide(_methods(body))
        if mode == "reset":
            _reset(handler.connection)
            handler.close_connection = True
            return
        if mode == "stall":
            self._closed.wait(self.max_stall)
            _reset(handler.connection)
            handler.close_connection = True
            return
        if mode == "slow":
            time.sleep(delay)
        try:
            status, answer = self._forward(body)
        except OSError:
            _reset(handler.connection)  # the node itself is unreachable: so is the proxy
            handler.close_connection = True
            return
        if mode == "drop":
            _reset(handler.connection)
            handler.close_connection = True
            return
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            conn.request("POST", self.upstream_path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _methods(body: bytes) -> list[str]:
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    calls = payload if isinstance(payload, list) else [payload]
    return [str(c.get("method")) for c in calls if isinstance(c, dict)]


def _reset(connection: socket.socket) -> None:
    """Closes a connection with a TCP reset (SO_LINGER 0) rather than an orderly FIN."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass
