"""Expose a pfmq broker's figures to Prometheus (``pip install 'pythonflow[prometheus]'``).

.. code-block:: python

    from pythonflow import pfmq
    from pythonflow.pfmq.integrations.prometheus import serve_metrics

    with pfmq.Broker('tcp://127.0.0.1:5555', start=True) as broker:
        metrics = serve_metrics(broker, port=9464)  # http://127.0.0.1:9464/metrics
        ...

``pfmq broker --metrics-port 9464`` does the same for a broker on the command line, and
``serve_metrics('tcp://broker-host:5556', port=9464)`` serves the figures of a broker in another
process, asked over its frontend. :class:`BrokerCollector` asks for :meth:`Broker.stats()
<pythonflow.pfmq.Broker.stats>` when Prometheus scrapes, so nothing runs per message; register it
on a registry of your own to export the figures with other metrics.

Totals are gauges (``pfmq_workers``, ``pfmq_queued_jobs``, ...) and counters
(``pfmq_completed_requests_total``, ``pfmq_requeued_jobs_total``, ``pfmq_restarts_total``, ...);
``pfmq_worker_*`` carry a ``worker`` label (the worker's id in hex). Per-task figures are left out:
each ``imap`` has a new id, and a label per task would grow Prometheus' series without bound.
Counters start again from zero when the broker restarts, which Prometheus' ``rate()`` allows for;
``pfmq_restarts_total`` counts the restarts of the supervisors that report now, so it drops when
one of them stops. ``pfmq_up`` is 0 while the broker does not answer.
"""
import logging
import socket
import socketserver
import threading
from typing import Any, Callable, Iterator, List, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import zmq

from ..protocol import ProtocolError
from ..transport import check_address

LOGGER = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'pythonflow[prometheus]'"

#: (key in Broker.stats(), metric name, type, help) of the broker's totals.
TOTALS = [
    ("workers", "pfmq_workers", "gauge", "Workers signed up with the broker."),
    ("capacity", "pfmq_capacity", "gauge", "Requests all workers can hold at once."),
    ("tasks", "pfmq_tasks", "gauge", "Tasks (imap, apply) the broker holds jobs of."),
    ("queued", "pfmq_queued_jobs", "gauge", "Jobs waiting for a worker."),
    ("in_flight", "pfmq_in_flight_jobs", "gauge", "Jobs held by workers."),
    ("completed", "pfmq_completed_requests", "counter", "Requests answered."),
    ("requeued", "pfmq_requeued_jobs", "counter", "Jobs sent again after their worker left."),
    ("failed", "pfmq_failed_jobs", "counter", "Jobs failed after max_attempts worker deaths."),
    ("cancelled", "pfmq_cancelled_jobs", "counter", "Jobs dropped with their task."),
    ("workers_lost", "pfmq_workers_lost", "counter", "Workers presumed dead (no heartbeats)."),
    ("restarts", "pfmq_restarts", "counter",
     "Worker processes started in place of dead ones, by the supervisors reporting now."),
    ("duplicates_dropped", "pfmq_duplicate_results", "counter", "Second results dropped."),
    ("dropped", "pfmq_dropped_messages", "counter", "Messages dropped as malformed."),
    ("bad_signatures", "pfmq_bad_signatures", "counter", "Messages with a wrong signature."),
    ("deadlines_hit", "pfmq_deadlines_hit", "counter",
     "Requests given up because they ran past their deadline (request_timeout)."),
]
#: The same for each worker, labelled with its id.
PER_WORKER = [
    ("completed", "pfmq_worker_completed_requests", "counter", "Requests answered by the worker."),
    ("in_flight", "pfmq_worker_in_flight_jobs", "gauge", "Jobs the worker holds."),
    ("capacity", "pfmq_worker_capacity", "gauge", "Requests the worker can hold at once."),
    ("deadlines_hit", "pfmq_worker_deadlines_hit", "counter",
     "Requests the worker gave up at their deadline."),
]


def require_prometheus_client():
    """Import and return ``prometheus_client``.

    Raises
    ------
    ImportError
        If it is not installed, with the command that installs it.
    """
    try:
        import prometheus_client
        import prometheus_client.core  # noqa: F401 (the metric families, a submodule)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "prometheus_client":
            raise  # not the missing extra: a genuine fault, with its traceback
        raise ImportError(f"pfmq metrics need prometheus_client: {INSTALL_HINT}",
                          name="prometheus_client") from None
    return prometheus_client


def check_metrics_port(port: int):
    """Return ``prometheus_client`` if it is installed and ``port`` is one to listen on.

    Raises
    ------
    ImportError
        If ``prometheus_client`` is not installed, with the command that installs it.
    ValueError
        If ``port`` is not an integer from 0 to 65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"the metrics port must be an integer from 0 to 65535, not {port!r}")
    return require_prometheus_client()


class BrokerCollector:
    """A Prometheus collector asking a broker for its figures at each scrape.

    Parameters
    ----------
    stats : callable
        Returns the figures of :meth:`Broker.stats() <pythonflow.pfmq.Broker.stats>`, e.g.
        ``broker.stats``; a ``TimeoutError`` (no answer) makes ``pfmq_up`` 0.
    """

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats
        self._core = require_prometheus_client().core

    def describe(self) -> List[Any]:
        """The metric families without samples (so that registering does not ask the broker)."""
        return list(self._families({}, up=0))

    def collect(self) -> Iterator[Any]:
        """The metric families of the broker's figures now."""
        try:
            stats = self._stats()
        except (TimeoutError, ProtocolError, zmq.ZMQError) as exc:
            LOGGER.warning("no figures from the broker for Prometheus: %s", exc)
            yield from self._families({}, up=0)
            return
        yield from self._families(stats, up=1)

    def _family(self, kind, name, text, labels=()):
        make = (self._core.CounterMetricFamily if kind == "counter"
                else self._core.GaugeMetricFamily)
        return make(name, text, labels=list(labels) if labels else None)

    def _families(self, stats: dict, up: int) -> Iterator[Any]:
        up_family = self._family("gauge", "pfmq_up", "1 if the broker answered this scrape.")
        up_family.add_metric([], up)
        yield up_family
        for key, name, kind, text in TOTALS:
            family = self._family(kind, name, text)
            if key in stats:
                family.add_metric([], stats[key])
            yield family
        workers = stats.get("per_worker") or {}
        for key, name, kind, text in PER_WORKER:
            family = self._family(kind, name, text, labels=["worker"])
            for worker_id, figures in sorted(workers.items()):
                family.add_metric([worker_id], figures.get(key, 0))
            yield family


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the name of the method's parameter)
        # A line on stderr per scrape would bury the broker's own log.
        LOGGER.debug("metrics request from %s: " + format, self.address_string(), *args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not keep the process alive


class MetricsServer:
    """A running metrics endpoint (see :func:`serve_metrics`); stop it with :meth:`stop`.

    Attributes
    ----------
    addr : str
        The address it listens on.
    port : int
        The port it listens on (the one chosen when ``port=0`` was asked for).
    url : str
        Where Prometheus scrapes it.
    """

    def __init__(self, server: WSGIServer, collector: BrokerCollector):
        self._server = server
        self.collector = collector
        self.addr, self.port = server.server_address[:2]
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        self.url = f"http://{host}:{self.port}/metrics"
        self._thread = threading.Thread(target=server.serve_forever, name="pfmq-metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: Optional[float] = 5.0) -> None:
        """Stop serving and close the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve_metrics(source, port: int, addr: str = "127.0.0.1", *, key=None, curve=None,
                  timeout: float = 5.0) -> MetricsServer:
    """Serve a broker's figures for Prometheus at ``http://ADDR:PORT/metrics``, in a thread.

    Parameters
    ----------
    source : Broker or str
        A :class:`~pythonflow.pfmq.Broker` of this process, or the frontend address of a broker
        anywhere (asked with :func:`~pythonflow.pfmq.query_status` at each scrape).
    port : int
        The port to listen on; 0 picks a free one (read it from the result's ``port``).
    addr : str
        The interface to listen on; the default serves this machine only.
    key, curve, timeout
        For a frontend address: the shared key, the :class:`~pythonflow.pfmq.CurveClient` and the
        seconds a scrape waits for the broker (as for :func:`~pythonflow.pfmq.query_status`).

    Returns
    -------
    server : MetricsServer
        The running endpoint.

    Raises
    ------
    ImportError
        If ``prometheus_client`` is not installed.
    ValueError
        If ``port`` or ``source`` is not valid.
    OSError
        If the port cannot be bound.
    """
    prometheus_client = check_metrics_port(port)
    if isinstance(source, str):
        from ..task import query_status

        address = check_address(source)

        def stats():
            return query_status(address, key=key, timeout=timeout, curve=curve)
    elif callable(getattr(source, "stats", None)):
        stats = source.stats
    else:
        raise ValueError(f"serve_metrics needs a Broker or a frontend address, not {source!r}")
    collector = BrokerCollector(stats)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server_class = _Server
    if ":" in addr:  # an IPv6 address
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        server = make_server(addr, port, prometheus_client.make_wsgi_app(registry), server_class,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {addr}:{port}: "
                      f"{exc.strerror or exc}") from None
    metrics = MetricsServer(server, collector)
    LOGGER.info("serving metrics for Prometheus at %s", metrics.url)
    return metrics
