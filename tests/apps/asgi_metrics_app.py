"""ASGI app for the uvicorn metrics test (the recipe of docs/integrations.md):
each worker imports this module, which starts copying its counters to the
multiprocess files; /metrics is every worker's sum, / is asgi_app's JSON."""

from __future__ import annotations

from asgi_app import app as info_app

import stek.contrib.prometheus
import stek.contrib.uvicorn

stek.contrib.prometheus.track(stek.contrib.uvicorn.installation, interval=0.2)


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/metrics":
        await stek.contrib.prometheus.asgi_app(scope, receive, send)
        return
    await info_app(scope, receive, send)
