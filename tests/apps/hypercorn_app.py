"""An ASGI app for hypercorn tests: which worker answered, and what its callback did."""

from __future__ import annotations

import dataclasses
import json
import os

print(f"worker {os.getpid()} loaded", flush=True)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    from stek.contrib import hypercorn as stek_hypercorn

    inst = stek_hypercorn.installation()
    body = json.dumps({
        "pid": os.getpid(),
        "counters": dataclasses.asdict(inst.counters) if inst is not None else None,
        "generation": inst.ring.generation if inst is not None else None,
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
