"""A loopback HTTP server that answers late on purpose, for bench_async.py.

``GET /delay?ms=50&src=3&keys=7,8`` sleeps 50 ms, then answers ``200`` with
one line per key, ``<src>:<key>``: here ``3:7`` and ``3:8``.  Each request
is served in its own thread, so requests that arrive together finish
together.  HTTP/1.0: one request per connection, closed after the reply.

Run as a script (bench_async.py does it, in a subprocess, so the server
never competes with the client's event loop for the GIL)::

    python benchmarks/_delay_server.py --max-requests 600 --max-seconds 120

It binds 127.0.0.1 on a free port, prints the port on stdout, and stops by
itself after ``--max-requests`` requests (the next ones get ``503``), after
``--max-seconds``, or when its stdin reaches end of file (the parent went
away), whichever comes first.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional
from urllib.parse import parse_qs, urlsplit

MAX_DELAY_MS = 5_000
MAX_KEYS = 10_000


class DelayServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: many clients connect at the same instant

    def __init__(self, max_requests: int) -> None:
        super().__init__(("127.0.0.1", 0), DelayHandler)
        self.max_requests = max_requests
        self.served = 0
        self._count_lock = threading.Lock()

    def admit(self) -> bool:
        """Count one request; False once the budget is spent."""
        with self._count_lock:
            self.served += 1
            return self.served <= self.max_requests

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to return: never call it from its thread.
        threading.Thread(target=self.shutdown, daemon=True).start()


class DelayHandler(BaseHTTPRequestHandler):
    server: DelayServer

    def do_GET(self) -> None:
        if not self.server.admit():
            self.reply(503, "request budget spent\n")
            self.server.stop()
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path != "/delay":
                raise ValueError(f"no such path {url.path!r}")
            delay_ms = float(query["ms"][0])
            source = query["src"][0]
            keys = query["keys"][0].split(",")
            if not 0 <= delay_ms <= MAX_DELAY_MS or len(keys) > MAX_KEYS:
                raise ValueError("delay or key count out of bounds")
        except (KeyError, ValueError) as error:
            self.reply(400, f"{error}\n")
            return
        time.sleep(delay_ms / 1000)
        self.reply(200, "".join(f"{source}:{key}\n" for key in keys))

    def reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would only slow it down


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-requests", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args(argv)

    server = DelayServer(args.max_requests)
    lifetime = threading.Timer(args.max_seconds, server.stop)
    lifetime.daemon = True
    lifetime.start()

    def stop_at_end_of_stdin() -> None:
        while sys.stdin.buffer.read(4096):  # the parent never writes; this waits for EOF
            pass
        server.stop()

    threading.Thread(target=stop_at_end_of_stdin, daemon=True).start()
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
