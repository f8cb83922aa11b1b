"""A fault-injecting HTTP proxy for tests: sits on 127.0.0.1 in front of an S3 server (moto) and, for a set
fraction of requests (or a scripted sequence), drops the connection, answers 500 or 503 (S3's XML error bodies),
or stalls without answering. Everything else is forwarded unchanged. Counts what it did.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("drop", "500", "503", "stall")
_ERROR_BODY = {"500": ("InternalError", "We encountered an internal error. Please try again."),
               "503": ("SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    """``FaultProxy(upstream).start()``; ``.url`` is its endpoint. Configure with :meth:`set`.

    rate: fraction of requests that get a fault (chosen among ``kinds`` by a generator seeded with ``seed``);
    script: faults for the next requests, in order (None = forward), used before ``rate`` applies;
    outage_after: every object GET after this many forwarded ones fails with ``outage_kind``;
    stall_s: how long a stalled request waits before the connection is closed without an answer;
    methods: the HTTP methods faults apply to (s3fs sends a HEAD before most GETs).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self._lock = threading.Lock()
        self.set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def set(self, rate: float = 0.0, kinds: tuple[str, ...] = FAULTS, seed: int = 0, script: list | None = None,
            outage_after: int | None = None, outage_kind: str = "503", stall_s: float = 3.0,
            methods: tuple[str, ...] = ("GET", "HEAD")) -> FaultProxy:
        with self._lock:
            self.methods = methods
            self.rate, self.kinds, self.rng = rate, kinds, random.Random(seed)
            self.script = list(script or [])
            self.outage_after, self.outage_kind, self.stall_s = outage_after, outage_kind, stall_s
            self.object_gets = 0
            self.counts.clear()
            self.log.clear()
        return self

    def start(self) -> FaultProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            is_object_get = method == "GET" and "list-type" not in path and path.count("/") >= 2
            if method not in self.methods:
                return None
            if self.script:
                return self.script.pop(0)
            if is_object_get and self.outage_after is not None and self.object_gets >= self.outage_after:
                return self.outage_kind
            fault = self.rng.choice(self.kinds) if self.rng.random() < self.rate else None
            if fault is None and is_object_get:
                self.object_gets += 1
            return fault

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        fault = self._decide(h.command, h.path)
        with self._lock:
            self.counts[fault or "forwarded"] += 1
            self.log.append((h.command, h.path, fault or "forwarded"))
        if fault == "drop":
            h.close_connection = True  # no answer at all: the client sees the connection closed
            return
        if fault == "stall":
            time.sleep(self.stall_s)
            h.close_connection = True
            return
        if fault in _ERROR_BODY:
            code, message = _ERROR_BODY[fault]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}'
                       f"</Message><RequestId>fault</RequestId></Error>").encode()
            h.send_response(int(fault))
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":  # a body after a HEAD answer would be read as the next response
                h.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                h.send_header(key, value)
        length = resp.getheader("Content-Length") if h.command == "HEAD" else None  # HEAD: the object's size
        h.send_header("Content-Length", length or str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
