"""The README recipes: asyncio.start_server(ssl=ctx) and aiohttp run with ssl_context."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

from aiohttp import web

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.tls_peers import reconnects


@TLS_VERSIONS
def test_asyncio_server_resumes_across_reconnects(certs: Certs, tmp_path: Path,
                                                  tls_version: ssl.TLSVersion) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, f"file:{tmp_path / 'ring.json'}", rotate=True)
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    async def main() -> asyncio.Server:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(main())
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        assert reconnects(port[0], client_context(certs, tls_version), 20) == 20
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    assert handle.counters.resumed == 20


def http_get(port: int, cctx: ssl.SSLContext,
             session: ssl.SSLSession | None) -> tuple[bytes, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data, tls.session, tls.session_reused


@TLS_VERSIONS
def test_aiohttp_server_resumes(certs: Certs, tmp_path: Path,
                                tls_version: ssl.TLSVersion) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, f"file:{tmp_path / 'ring.json'}", rotate=True)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        port.append(runner.addresses[0][1])
        ready.set()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        cctx = client_context(certs, tls_version)
        body, session, _ = http_get(port[0], cctx, None)
        assert body.endswith(b"hello")
        resumed = 0
        for _ in range(10):
            body, session, reused = http_get(port[0], cctx, session)
            assert body.endswith(b"hello")
            resumed += reused
        assert resumed == 10
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
    assert handle.counters.resumed == 10
