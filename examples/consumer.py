"""A consumer of transformed images, as a training loop would be.

It runs the broker in a background thread and binds the address workers connect to, then asks
for transformed images: one with ``apply``, a stream with ``imap``. Start it first, then workers::

    python examples/consumer.py --backend tcp://127.0.0.1:5555 --images 32
    python examples/worker.py --address tcp://127.0.0.1:5555

With a standalone broker (``pfmq broker``) pass its frontend instead: ``--frontend
tcp://127.0.0.1:5556``.
"""
import argparse
import time

from pythonflow import pfmq
from pythonflow.data import sample_image_path


def consume(apply, imap, images):
    request = {"fetches": "rotated_image", "context": {"filename": sample_image_path()}}
    image = apply(request)
    print(f"one image: shape {image.shape}, mean {image.mean():.3f}")

    started = time.perf_counter()
    # The same request many times: noise and angle are random, so each result differs.
    # seed= makes them reproducible whichever worker evaluates which request.
    total = 0.0
    for image in imap([request] * images, seed=42):
        total += float(image.mean())  # a training step would go here
    elapsed = time.perf_counter() - started
    print(f"{images} images in {elapsed:.2f} s ({images / elapsed:.1f} images/s), "
          f"mean brightness {total / images:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tcp://127.0.0.1:5555",
                        help="address to bind for workers (default: %(default)s)")
    parser.add_argument("--frontend", default=None,
                        help="use the standalone broker with this frontend address instead")
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    if args.frontend:
        consume(lambda request: pfmq.apply(request, args.frontend),
                lambda requests, **options: pfmq.Task(requests, args.frontend, **options),
                args.images)
        return
    with pfmq.Broker(args.backend) as broker:  # serves until the end of the block
        print(f"waiting for workers on {broker.backend_address}")
        consume(broker.apply, broker.imap, args.images)


if __name__ == "__main__":
    main()
