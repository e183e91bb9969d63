"""/metrics and /healthz of the command-line processes that have no web server of their own."""

from __future__ import annotations

import json
import threading
from typing import Any


def serve_metrics(where: str, runner: Any) -> Any:
    """/metrics and /healthz on HOST:PORT, in a thread, for a process without the exchange's web
    server (`gpux settle`, a standby): ``runner`` has metric_samples(), health() and status()."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gateway.metrics import Metrics

    metrics = Metrics()
    metrics.add(runner.metric_samples)
    host, _, port = where.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/metrics":
                body, status, ctype = metrics.render().encode(), 200, "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                health = runner.health()
                body = json.dumps({"status": "ok" if health == "ok" else "failing", "checks": {"follower": health},
                                   **runner.status()}).encode()
                status, ctype = (200 if health == "ok" else 503), "application/json"
            else:
                body, status, ctype = b"not found", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            return None

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    print(f"gpux: metrics on http://{host or '127.0.0.1'}:{server.server_address[1]}/metrics", flush=True)
    return server
