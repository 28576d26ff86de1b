"""Stand-ins for the simulator and the workers in the dev-stack tests (same command-line shape).

    python fake_parts.py simulator --host 127.0.0.1 --port 8299 [--profile NAME]
    python fake_parts.py worker --queue keel-interactive

The simulator answers ``GET /health`` with 200; the worker just stays alive. Both run until
signalled, like the real ones.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/health"
        body = b'{"status":"ok"}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["simulator", "worker"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile")
    parser.add_argument("--queue")
    args = parser.parse_args()
    if args.kind == "simulator":
        ThreadingHTTPServer((args.host, args.port), _Health).serve_forever()
    else:
        print(f"fake worker polling {args.queue}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
