"""The ``pfmq demo`` command: the image transformation graph on a local cluster.

The graph itself lives in :mod:`pythonflow.pfmq.demo.images`; this package re-exports its builder
so that workers find it as ``pythonflow.pfmq.demo:build_graph``. Everything here needs the
``demo`` extra (Pillow, scipy and tqdm: ``pip install 'pythonflow[demo]'``).
"""
import os
import sys
import time
from typing import Optional, Tuple

from tqdm import tqdm  # here, not in run(): a missing extra shows before any worker starts

from pythonflow.data import sample_image_path

from .. import launch
from ..cluster import LocalCluster
from .images import (
    add_noise,
    build_graph,
    load_image,
    make_noise,
    random_angle,
    rotate,
    side_by_side,
)

__all__ = ["GRAPH_REFERENCE", "build_graph", "load_image", "make_noise", "add_noise",
           "random_angle", "rotate", "side_by_side", "sample_image_path", "describe_waiting",
           "run"]

#: How workers find the graph: they import this package and call :func:`build_graph`.
GRAPH_REFERENCE = "pythonflow.pfmq.demo:build_graph"


def _throughput(cluster, requests, description: str) -> Tuple[float, dict]:
    """Images per second of a seeded run over ``requests``, and the task's statistics."""
    started = time.perf_counter()
    task = cluster.imap(requests, seed=0)
    # len(task) lets tqdm show the total.
    for _ in tqdm(task, desc=description, unit="image", file=sys.stderr, leave=False):
        pass
    return len(requests) / (time.perf_counter() - started), task.stats()


def describe_waiting(stats: dict) -> str:
    """How long the consumer of a task waited for results, from ``task.stats()``."""
    waited, elapsed = stats["waiting_seconds"], stats["elapsed_seconds"]
    share = waited / elapsed if elapsed > 0 else 0.0
    return f"consumer waited {waited:.2f} s of {elapsed:.2f} s ({share:.0%})"


def run(images: int = 64, workers: Optional[int] = None, output: str = "pfmq-demo.png") -> int:
    """Transform ``images`` copies of the sample image on 1 and on ``workers`` workers, print the
    throughput of each and write a comparison picture to ``output``; returns 0."""
    workers = workers or launch.default_num_workers()
    filename = sample_image_path()
    requests = [{"fetches": "rotated_image", "context": {"filename": filename}}
                for _ in range(images)]
    print(f"pfmq demo: noise and rotation of {images} images ({os.path.basename(filename)}) "
          f"on a local cluster")
    rates = {}
    for count in sorted({1, workers}):
        with LocalCluster(GRAPH_REFERENCE, num_workers=count) as cluster:
            label = f"{count} worker{'s' if count > 1 else ''}"
            rates[count], stats = _throughput(cluster, requests, label)
            print(f"  {label:<11} {rates[count]:8.1f} images/s; {describe_waiting(stats)}")
            if count == workers:
                original, noisy, rotated = cluster.apply(
                    {"fetches": ["image", "noisy_image", "rotated_image"],
                     "context": {"filename": filename}}, seed=0)
    if workers > 1:
        print(f"  speed-up    {rates[workers] / rates[1]:8.2f}x with {workers} workers")
    picture = side_by_side([original, noisy, rotated], ["original", "noisy", "rotated"])
    picture.save(output, format="PNG")
    print(f"wrote {os.path.abspath(output)}")
    return 0
