"""A real HTTP server on 127.0.0.1 standing in for a Slack incoming webhook: the alert tests post
to it and read what it received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class Webhook:
    """A real HTTP server on 127.0.0.1 standing in for Slack's incoming webhook."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict] = []
        self.received = received
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token-xyz"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
