"""An ASGI app for hypercorn tests: which worker answered, and what its callback did."""

from __future__ import annotations

import os

from worker_info import send_worker_info

print(f"worker {os.getpid()} loaded", flush=True)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    from stek.contrib import hypercorn as stek_hypercorn

    await send_worker_info(send, stek_hypercorn.installation())
