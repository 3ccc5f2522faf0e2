"""A real scoring service for http rewards (http.server on a loopback port), recording what it got.

Paths: /score answers len(response) per response; /leak fails (HTTP 500) with a reply that echoes
the request's Authorization header and a token of its own, as a careless scorer would; /garbled
answers 200 with a non-JSON reply holding that token; /redirect answers 302 to /score.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

REPLY_TOKEN = "scorer-internal-token-9f2c"  # what /leak and /garbled put in their replies


@dataclass
class Scorer:
    url: str  # http://127.0.0.1:<port>
    port: int
    requests: list[dict] = field(default_factory=list)


def _handler(scorer: Scorer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            scorer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
            auth = self.headers.get("Authorization", "")
            if self.path.startswith("/score"):
                self._reply(200, json.dumps({"scores": [float(len(r)) for r in body["responses"]]}))
            elif self.path.startswith("/leak"):
                self._reply(500, f"upstream failure; request had Authorization={auth!r}; internal {REPLY_TOKEN}")
            elif self.path.startswith("/garbled"):
                self._reply(200, f"scores: ??? ({REPLY_TOKEN})")
            elif self.path.startswith("/redirect"):
                self._reply(302, "", location="/score")
            else:
                self._reply(404, "no such path")

        def _reply(self, status: int, text: str, location: str | None = None) -> None:
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def running_scorer(host: str = "127.0.0.1") -> Iterator[Scorer]:
    server = ThreadingHTTPServer((host, 0), None)  # port 0: the OS picks a free one
    port = server.server_address[1]
    scorer = Scorer(url=f"http://127.0.0.1:{port}", port=port)
    server.RequestHandlerClass = _handler(scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield scorer
    finally:
        server.shutdown()
        server.server_close()
