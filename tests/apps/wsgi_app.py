"""A WSGI app for gunicorn tests: which worker answered, and what its callback did."""

from __future__ import annotations

from worker_info import worker_info


def app(environ, start_response):
    from stek.contrib import gunicorn as stek_gunicorn

    body = worker_info(stek_gunicorn.installation())
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
