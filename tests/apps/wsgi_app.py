"""A WSGI app for gunicorn tests: which worker answered, and what its callback did."""

from __future__ import annotations

import dataclasses
import json
import os


def app(environ, start_response):
    from stek.contrib import gunicorn as stek_gunicorn

    inst = stek_gunicorn.installation()
    body = json.dumps({
        "pid": os.getpid(),
        "counters": dataclasses.asdict(inst.counters) if inst is not None else None,
        "generation": inst.ring.generation if inst is not None else None,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
