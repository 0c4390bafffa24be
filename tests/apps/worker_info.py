"""What the web apps of these tests answer: which worker did, and what its callback did.

Imported by the apps beside it (this folder is on their ``sys.path``: the
servers load them from here).
"""

from __future__ import annotations

import dataclasses
import json
import os


def worker_info(inst) -> bytes:
    """This process's pid, and the counters and ring generation of its stek
    installation ``inst`` (null for both without one), as JSON."""
    return json.dumps({
        "pid": os.getpid(),
        "counters": dataclasses.asdict(inst.counters) if inst is not None else None,
        "generation": inst.ring.generation if inst is not None else None,
    }).encode()


async def send_worker_info(send, inst) -> None:
    """The ASGI response: :func:`worker_info` as application/json."""
    body = worker_info(inst)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
