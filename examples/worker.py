"""A worker serving the image transformation graph.

Start the consumer (``python examples/consumer.py``), then one or more of these, on this machine
or on others::

    python examples/worker.py --address tcp://127.0.0.1:5555

Stop it with Ctrl-C: it finishes the image it is transforming and hands its waiting requests back
to the broker.
"""
import argparse
import logging

from pythonflow import pfmq
from pythonflow.pfmq.demo import build_graph


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="tcp://127.0.0.1:5555",
                        help="the broker's backend address (default: %(default)s)")
    parser.add_argument("--prefetch", type=int, default=1,
                        help="requests held ready beside the one being evaluated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    graph = build_graph()
    worker = pfmq.Worker.from_graph(graph, args.address, prefetch=args.prefetch)
    try:
        with worker:  # starts the thread that talks to the broker
            worker.process_requests()  # evaluates requests here until cancelled
    except KeyboardInterrupt:
        print(f"worker stopped after {worker.executed} requests")


if __name__ == "__main__":
    main()
