"""gunicorn config file: the stek hook (certfile, keyfile, bind come on the command line)."""

import logging
import sys

import stek.contrib.gunicorn

ssl_context = stek.contrib.gunicorn.ssl_context

# stek logs through the standard logging module; gunicorn configures only its
# own loggers, so give stek's INFO lines (one "stek installed in pid N" per
# worker) a handler on stderr, where the tests read gunicorn's log.
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger("stek").addHandler(_handler)
logging.getLogger("stek").setLevel(logging.INFO)
