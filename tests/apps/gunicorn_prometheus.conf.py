"""gunicorn config file: the stek hook plus metrics summed across workers
(prometheus-client multiprocess mode; $PROMETHEUS_MULTIPROC_DIR must be an
empty directory when gunicorn starts).  The recipe of docs/integrations.md."""

import stek.contrib.gunicorn
import stek.contrib.prometheus

ssl_context = stek.contrib.gunicorn.ssl_context


def post_worker_init(worker):
    # In each worker, after the fork: copy its counters to the shared files.
    stek.contrib.prometheus.track(stek.contrib.gunicorn.installation, interval=0.2)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
