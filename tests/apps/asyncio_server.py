"""The asyncio recipe of docs/integrations.md, as a server process.

usage: asyncio_server.py PORT CERT KEY   (store from $STEK_STORE)

Reads one line, answers one JSON line (pid, resumed, counters, generation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import sys

import stek


async def main(port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handle = stek.install(ctx, rotate=True)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        reused = writer.get_extra_info("ssl_object").session_reused
        writer.write(json.dumps({
            "pid": os.getpid(), "reused": reused,
            "counters": dataclasses.asdict(handle.counters),
            "generation": handle.ring.generation,
        }).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=ctx)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
