"""The ``pfmq`` command: run a broker or workers, query a broker, make keys, demo, benchmarks.

Every command has ``--help``. Mistakes in the command line (an unknown option, an address that
does not parse, a port in use, a graph reference that does not import) end the command with a
one-line message on stderr and a non-zero exit status.
"""
import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import List, Optional

import zmq

from . import launch
from .memory import parse_size
from .security import resolve_key
from .transport import check_address

LOGGER = logging.getLogger(__name__)
DEFAULT_FRONTEND = "tcp://127.0.0.1:5556"
DEFAULT_BACKEND = "tcp://127.0.0.1:5555"
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class UsageError(Exception):
    """A mistake of the user, reported in one line without a traceback."""


class _Stopped(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave a blocking wait."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line instead of the usage block: the user asked for something we do not know.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_connect_address(address: str) -> str:
    """Raise ``UsageError`` unless ZeroMQ can connect a socket to ``address``."""
    try:
        check_address(address)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        try:
            sock.connect(address)
        finally:
            sock.close(linger=0)
    except (ValueError, zmq.ZMQError) as exc:
        raise UsageError(f"invalid address {address!r}: {exc}") from None
    return address


def _stop_on_signals():
    def handler(signum, frame):
        # A second signal while stopping takes the default action (terminate now).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# -- keys and encryption --------------------------------------------------------------------------


def _read_key(args) -> Optional[bytes]:
    """The key of ``--key-file`` (surrounding whitespace stripped), else ``PFMQ_KEY``, else None."""
    if getattr(args, "key_file", None) is None:
        return resolve_key()
    try:
        with open(args.key_file, "rb") as file:
            key = file.read().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the key file {args.key_file!r}: {exc.strerror}") from None
    if not key:
        raise UsageError(f"the key file {args.key_file!r} is empty")
    return key


def _curve_server(args):
    if args.curve_cert is None:
        if args.curve_clients is not None:
            raise UsageError("--curve-clients needs --curve-cert (the broker's secret certificate)")
        return None
    from .security import CurveServer

    try:
        server = CurveServer.from_files(args.curve_cert, args.curve_clients)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if args.curve_clients is None:
        LOGGER.warning("CURVE without --curve-clients: traffic is encrypted but any client may "
                       "connect")
    return server


def _curve_client(args):
    if (args.curve_cert is None) != (args.curve_server is None):
        raise UsageError("CURVE needs both --curve-cert (this side's secret certificate) and "
                         "--curve-server (the broker's public certificate)")
    if args.curve_cert is None:
        return None
    from .security import CurveClient

    try:
        return CurveClient.from_files(args.curve_server, args.curve_cert)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None


def check_exposure(addresses, key, curve, insecure: bool) -> None:
    """Raise ``UsageError`` when binding beyond loopback with neither a key nor CURVE."""
    from .security import is_loopback

    try:
        for address in addresses:  # a malformed address is reported as such, not as exposed
            check_address(address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    exposed = [address for address in addresses if not is_loopback(address)]
    if exposed and key is None and curve is None and not insecure:
        raise UsageError(f"refusing to bind {exposed[0]} without a key or CURVE: anyone who can "
                         "reach it could run code on the workers (set PFMQ_KEY, give --key-file "
                         "or --curve-cert, or pass --insecure)")


def run_keygen(args) -> int:
    """``pfmq keygen``: write a CURVE key pair as certificate files."""
    from .security import generate_certificates

    try:
        public, secret = generate_certificates(args.directory, args.name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    print(f"public key:  {public}  (give it to the peers)")
    print(f"secret key:  {secret}  (keep it private)")
    return 0


# -- commands -------------------------------------------------------------------------------------


def run_broker(args) -> int:
    """``pfmq broker``: serve until SIGINT/SIGTERM."""
    from .broker import Broker

    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    key = _read_key(args)
    curve = _curve_server(args)
    check_exposure([args.frontend, args.backend], key, curve, args.insecure)
    if args.metrics_port is not None:  # a bad port or a missing extra, before anything starts
        from .integrations import prometheus
        try:
            prometheus.check_metrics_port(args.metrics_port)
        except (ImportError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    broker = metrics = None
    try:
        broker = Broker(args.backend, args.frontend, heartbeat_interval=args.heartbeat_interval,
                        key=key, curve=curve)
        broker.run_async()
        if args.metrics_port is not None:
            metrics = prometheus.serve_metrics(broker, args.metrics_port, args.metrics_addr)
        _stop_on_signals()
        while broker.is_alive:  # the signal handler interrupts the sleep
            time.sleep(1.0)
    except OSError as exc:
        raise UsageError(exc.strerror or str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except _Stopped as stop:
        LOGGER.info("stopping the broker (%s)", stop)
    finally:
        if metrics is not None:
            metrics.stop()
        if broker is not None:
            broker.cancel(timeout=5.0)
    return 0


def run_worker(args) -> int:
    """``pfmq worker``: serve a graph in one or more processes until SIGINT/SIGTERM."""
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    _check_connect_address(args.address)
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes must be at least 1, not {args.processes}")
    if args.prefetch < 0:
        raise UsageError(f"--prefetch must be at least 0, not {args.prefetch}")
    try:
        max_memory = None if args.max_memory is None else parse_size(args.max_memory,
                                                                      "--max-memory")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        spec = launch.pack_target(args.reference)
    except Exception as exc:  # whatever importing the user's module raised
        raise UsageError(f"cannot load {args.reference!r}: {exc}") from None
    options = {"prefetch": args.prefetch, "timeout": args.timeout,
               "num_retries": args.num_retries, "heartbeat_interval": args.heartbeat_interval,
               "key": _read_key(args), "curve": _curve_client(args), "max_memory": max_memory}
    if args.serializer:
        options["serializer"] = args.serializer
    if args.processes is None:
        LOGGER.info("serving %s for the broker at %s", args.reference, args.address)
        return launch.serve(spec, args.address, options, args.log_level)
    from .supervisor import CrashLoopError, Supervisor

    LOGGER.info("serving %s for the broker at %s in %d supervised processes", args.reference,
                args.address, args.processes)
    pool = Supervisor(spec, args.address, args.processes, options, args.log_level)
    _stop_on_signals()
    try:
        pool.run()  # until every process ended on purpose, a crash loop or a signal
    except _Stopped as stop:
        LOGGER.info("stopping %d worker processes (%s)", args.processes, stop)
    except CrashLoopError as exc:
        print(f"pfmq worker: error: {exc}", file=sys.stderr)
        return 1
    # Stopped on request: also a process that our SIGTERM met before its handler was installed,
    # and one that had just exited to be replaced (after passing --max-memory).
    clean = (0, -signal.SIGTERM, launch.EXIT_RESTART)
    return 0 if all(p.exitcode in clean for p in pool.processes) else 1


def run_status(args) -> int:
    """``pfmq status``: print a broker's statistics, once or with ``--watch`` until a signal."""
    from .status import format_status, watch
    from .task import query_status

    if args.interval is not None and not args.watch:
        raise UsageError("--interval applies only with --watch")
    interval = 1.0 if args.interval is None else args.interval
    if not 0 < interval < float("inf"):
        raise UsageError(f"--interval must be a positive number of seconds, not {interval:g}")
    _check_connect_address(args.frontend)
    key, curve = _read_key(args), _curve_client(args)

    def query():
        return query_status(args.frontend, key=key, timeout=args.timeout, curve=curve)

    if args.watch:
        _stop_on_signals()
        try:
            watch(query, args.frontend, interval, as_json=args.json)
        except _Stopped:  # Ctrl-C or SIGTERM: how watching ends
            pass
        except BrokenPipeError:  # the reader left, as in `pfmq status --watch --json | head -1`
            # Flushing stdout at exit would fail again: point it at nothing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        stats = query()
    except TimeoutError as exc:
        raise UsageError(f"{exc} (is a broker running there? is PFMQ_KEY the same?)") from None
    print(json.dumps(stats, indent=2) if args.json else format_status(stats, args.frontend))
    return 0


#: The top-level modules of the ``demo`` extra (Pillow, scipy, tqdm) that the demo imports.
DEMO_MODULES = ("PIL", "scipy", "tqdm")


def _import_demo():
    """Import :mod:`pythonflow.pfmq.demo`; ``UsageError`` if the ``demo`` extra is missing."""
    try:
        from . import demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in DEMO_MODULES:
            raise  # not a missing extra: a genuine fault, with its traceback
        raise UsageError(f"the demo needs the 'demo' extra (no module {exc.name!r}): "
                         "pip install 'pythonflow[demo]'") from None
    return demo


def run_demo(args) -> int:
    """``pfmq demo``: the image transformation pipeline on a local cluster."""
    demo = _import_demo()
    if args.images < 1 or (args.workers is not None and args.workers < 1):
        raise UsageError("--images and --workers must be at least 1")
    try:  # before any worker starts: an install without its data files is for the user to mend
        demo.sample_image_path()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    return demo.run(images=args.images, workers=args.workers, output=args.output)


def run_bench(argv: List[str]) -> int:
    """``pfmq bench``: hand the arguments to the benchmark suite."""
    try:
        from . import bench
    except ImportError as exc:
        raise UsageError(f"the benchmark suite is not available: {exc}") from None
    return bench.main(argv) or 0


# -- argument parsing -----------------------------------------------------------------------------


def _log_level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {name!r}")
    return level


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``pfmq`` command line."""
    parser = _Parser(prog="pfmq", description="Distributed evaluation of pythonflow graphs over "
                     "ZeroMQ. Set PFMQ_KEY to the same secret everywhere to sign all messages.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    broker = commands.add_parser("broker", help="run a broker",
                                 description="Run a broker between tasks and workers until "
                                 "SIGINT or SIGTERM; logs workers joining and leaving.")
    broker.add_argument("--frontend", default=DEFAULT_FRONTEND,
                        help="address tasks connect to (default: %(default)s)")
    broker.add_argument("--backend", default=DEFAULT_BACKEND,
                        help="address workers connect to (default: %(default)s)")

    worker = commands.add_parser("worker", help="run workers serving a graph",
                                 description="Run worker processes evaluating requests with a "
                                 "graph until SIGINT or SIGTERM.")
    worker.add_argument("reference", help="the graph, as package.module:graph (or a function "
                        "without arguments returning it)")
    worker.add_argument("--address", default=DEFAULT_BACKEND,
                        help="the broker's backend address (default: %(default)s)")
    worker.add_argument("--processes", type=int, default=None, metavar="N",
                        help="run N worker processes, each replaced when it dies (default: "
                        "one worker in this process)")
    worker.add_argument("--prefetch", type=int, default=1, metavar="K",
                        help="requests each worker holds ready (default: %(default)s)")
    worker.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds without a word from the broker before a retry is counted "
                        "(default: %(default)s)")
    worker.add_argument("--num-retries", type=int, default=None, metavar="N",
                        help="give up after N silent timeouts (default: wait for the broker)")
    worker.add_argument("--serializer", default=None,
                        help="serializer name, e.g. msgpack (default: pickle)")
    worker.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="resident memory (bytes, or e.g. 500MB, 2GiB) past which a worker "
                        "finishes its request, hands back its prefetched ones and exits with "
                        f"status {launch.EXIT_RESTART}: replaced at once with --processes "
                        "(default: no limit)")

    broker.add_argument("--insecure", action="store_true",
                        help="allow binding a non-loopback address without a key or CURVE")
    broker.add_argument("--curve-clients", metavar="DIR",
                        help="directory of the public certificates of the workers and tasks "
                        "allowed in (default with --curve-cert: any client)")
    broker.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve the figures for Prometheus at http://ADDR:PORT/metrics "
                        "(needs the prometheus extra; 0: a free port, logged)")
    broker.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                        help="the interface of --metrics-port (default: %(default)s)")

    for sub in (broker, worker):
        sub.add_argument("--heartbeat-interval", type=float, default=1.0, metavar="SECONDS",
                         help="seconds between heartbeats (default: %(default)s)")
        sub.add_argument("--log-level", type=_log_level, default=logging.INFO, metavar="LEVEL",
                         help="DEBUG, INFO, WARNING or ERROR (default: INFO)")

    status = commands.add_parser("status", help="print a broker's statistics",
                                 description="Print a broker's statistics: workers, queued and "
                                 "in-flight requests, completed requests, per-worker counts.")
    status.add_argument("--frontend", default=DEFAULT_FRONTEND,
                        help="the broker's frontend address (default: %(default)s)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="seconds to wait for an answer (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the figures as JSON (with "
                        "--watch: one line per refresh)")
    status.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C or "
                        "SIGTERM, with results per second over the last refresh")
    status.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="seconds between refreshes of --watch (default: 1)")

    for sub in (broker, worker, status):
        sub.add_argument("--key-file", metavar="PATH",
                         help="file holding the shared key that signs every message (default: "
                         "the PFMQ_KEY environment variable, else unsigned)")
        sub.add_argument("--curve-cert", metavar="PATH",
                         help="this side's CURVE secret certificate (NAME.key_secret from pfmq "
                         "keygen); encrypts tcp:// traffic")
    for sub in (worker, status):
        sub.add_argument("--curve-server", metavar="PATH",
                         help="the broker's CURVE public certificate (NAME.key)")

    keygen = commands.add_parser("keygen", help="write a CURVE key pair",
                                 description="Write a CURVE key pair as certificate files "
                                 "DIR/NAME.key (public: give it to the peers) and "
                                 "DIR/NAME.key_secret (private).")
    keygen.add_argument("directory", metavar="DIR", help="where to write (created if missing)")
    keygen.add_argument("--name", default="pfmq", help="file name stem (default: %(default)s)")

    demo = commands.add_parser("demo", help="run the image transformation demo",
                               description="Run the image transformation pipeline on a local "
                               "cluster, print throughput for one worker and for all workers, "
                               "and write a picture of original, noisy and rotated images.")
    demo.add_argument("--images", type=int, default=64, metavar="N",
                      help="images to transform (default: %(default)s)")
    demo.add_argument("--workers", type=int, default=None, metavar="N",
                      help="worker processes (default: the number of CPUs)")
    demo.add_argument("--output", default="pfmq-demo.png", metavar="PATH",
                      help="where to write the picture (default: %(default)s)")

    commands.add_parser("bench", help="run the benchmark suite (pfmq bench --help for its "
                        "options)", add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``pfmq`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # the suite parses its own options, --help included
            return run_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return {"broker": run_broker, "worker": run_worker, "status": run_status,
                "demo": run_demo, "keygen": run_keygen}[args.command](args)
    except UsageError as exc:
        command = f"pfmq {argv[0]}" if argv else "pfmq"
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stopped):
        return 130


if __name__ == "__main__":
    sys.exit(main())
