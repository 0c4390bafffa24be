"""The tornado recipe of docs/integrations.md: fork_processes, then stek in each worker.

usage: tornado_server.py PORT CERT KEY WORKERS stek|plain

plain: the multi-process pattern of tornado's documentation, with ssl_options
as a dict, so each worker builds its own context (and so its own ticket key).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import tornado.httpserver
import tornado.netutil
import tornado.process
import tornado.web
from worker_info import worker_info

port, cert, key, workers, mode = sys.argv[1:6]
handle = None


class Info(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Connection", "close")
        self.finish(worker_info(handle))


async def serve(sockets) -> None:
    global handle
    if mode == "stek":
        import stek

        # After the fork: each worker installs on its own context (its own counters).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        handle = stek.install(ctx, rotate=True)
        ssl_options = ctx
    else:
        ssl_options = {"certfile": cert, "keyfile": key}
    server = tornado.httpserver.HTTPServer(tornado.web.Application([("/", Info)]),
                                          ssl_options=ssl_options)
    server.add_sockets(sockets)
    print(f"worker {os.getpid()} ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sockets = tornado.netutil.bind_sockets(int(port), "127.0.0.1")
    tornado.process.fork_processes(int(workers))
    asyncio.run(serve(sockets))
