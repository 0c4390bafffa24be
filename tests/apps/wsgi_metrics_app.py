"""WSGI app for the metrics test: /metrics is every worker's sum, / is wsgi_app's JSON."""

from __future__ import annotations

from wsgi_app import app as info_app

import stek.contrib.prometheus


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/metrics":
        return stek.contrib.prometheus.wsgi_app(environ, start_response)
    return info_app(environ, start_response)
