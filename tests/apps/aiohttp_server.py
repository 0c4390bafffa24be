"""The aiohttp recipe of docs/integrations.md, as a server process.

usage: aiohttp_server.py PORT CERT KEY   (store from $STEK_STORE)
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import sys

from aiohttp import web

import stek

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
handle = stek.install(ctx, rotate=True)


async def index(request: web.Request) -> web.Response:
    return web.json_response({
        "pid": os.getpid(),
        "counters": dataclasses.asdict(handle.counters),
        "generation": handle.ring.generation,
    }, headers={"Connection": "close"})


app = web.Application()
app.add_routes([web.get("/", index)])
web.run_app(app, host="127.0.0.1", port=port, ssl_context=ctx,
            print=lambda *_: print(f"ready {port}", flush=True))
