"""gunicorn config file: the stek hook (certfile, keyfile, bind come on the command line)."""

import stek.contrib.gunicorn

ssl_context = stek.contrib.gunicorn.ssl_context
