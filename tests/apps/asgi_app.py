"""An ASGI app for uvicorn tests: which worker answered, and what its callback did."""

from __future__ import annotations

from worker_info import send_worker_info


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    from stek.contrib import uvicorn as stek_uvicorn

    await send_worker_info(send, stek_uvicorn.installation())
