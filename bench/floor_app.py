"""The floor of the read row: a Flask app answering a constant JSON, under `secrets-hub serve`'s server settings.

It does what any Flask view behind granian must do and nothing secrets-hub adds (no token check, no
query, no decryption, no audit row), so "read value / floor" shows how much of the server's capacity
the product itself uses. bench/run.py starts it: `python bench/floor_app.py PORT WORKERS BACKEND`, on
granian's WSGI interface with the threads a WSGI worker of `serve` gets on BACKEND. Where `serve` runs an
event loop instead (SQLite), a bare Flask app is still served as Flask apps are, by WSGI threads: 4 per
worker, which measured the same as 1, 2 or 8 (6,000-7,600 req/s on a 2-core AMD EPYC VM).
"""

from __future__ import annotations

import sys

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/api/secrets/<key>")
def constant(key: str):
    return jsonify({"data": {"key": "BENCH_KEY", "value": "a constant value"}})


if __name__ == "__main__":
    from secrets_hub.server import WSGI_THREADS, serve_app

    serve_app("floor_app:app", "127.0.0.1", int(sys.argv[1]), int(sys.argv[2]), "wsgi", WSGI_THREADS[sys.argv[3]])
