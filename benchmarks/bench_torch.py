"""A training loop fed by pfmq's IterableDataset or by torch's DataLoader: images per second.

Both feed the same loop (a small convolutional model: forward, backward, SGD step per batch)
with the same transformation, the demo's image graph (read with Pillow, noise, rotation with
scipy) on copies of the sample image scaled to ``--size`` pixels:

* pfmq: a :class:`~pythonflow.pfmq.LocalCluster` of ``W`` worker processes evaluates the graph,
  :class:`pythonflow.pfmq.torch.IterableDataset` makes batches of the results in this process;
* torch: ``DataLoader(num_workers=W, persistent_workers=True)`` over a map-style dataset that
  evaluates the graph in its loader processes and collates there.

For ``W`` = 1 and 2 it prints the median images per second, the median fraction of the loop's
time spent waiting for the next batch, the ratio pfmq/torch, and the CPU time per image of the
training process itself (the loop, and for pfmq also the broker thread and the receiving of
results, which run there). Runs of the two are interleaved
(repeat after repeat, each W and each loader in turn), after one warm-up epoch each, so that a
slower machine at one moment affects both. Start-up (worker processes) is not measured. Run::

    python benchmarks/bench_torch.py [--images 256] [--size 128] [--batch-size 16] [--repeats 5]
    python benchmarks/bench_torch.py --quick    # a smoke run of a few seconds
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure this checkout, here and in the worker processes (which see PYTHONPATH).
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from pythonflow.data import sample_image_path  # noqa: E402
from pythonflow.pfmq.cluster import LocalCluster  # noqa: E402
from pythonflow.pfmq.demo.images import build_graph  # noqa: E402
from pythonflow.pfmq.torch import IterableDataset  # noqa: E402
from pythonflow.pfmq.worker import seed_generators  # noqa: E402

GRAPH_REFERENCE = "pythonflow.pfmq.demo:build_graph"
WORKER_COUNTS = (1, 2)


class GraphImages(Dataset):
    """The torch side: image ``i`` is the graph's ``rotated_image``, seeded as pfmq seeds it."""

    def __init__(self, filenames, seed: int = 0):
        self.filenames = filenames
        self.seed = seed
        self.graph = build_graph()

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int):
        seed_generators(self.seed, index)
        return self.graph("rotated_image", filename=self.filenames[index])


def make_model():
    """A small model whose step costs a few milliseconds per batch on one thread."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def train_epoch(batches, model, optimizer) -> tuple:
    """Train on every batch of ``batches``; return (images, seconds, seconds waiting, CPU
    seconds of this process: the loop and, for pfmq, the broker and receiving threads)."""
    iterator = iter(batches)
    images = waited = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while True:
        asked = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        waited += time.perf_counter() - asked
        optimizer.zero_grad()
        model(batch.permute(0, 3, 1, 2)).square().mean().backward()
        optimizer.step()
        images += len(batch)
    return images, time.perf_counter() - started, waited, time.process_time() - cpu


def make_images(directory: str, count: int, size: int) -> list:
    path = os.path.join(directory, f"sample-{size}.png")
    with Image.open(sample_image_path()) as image:
        image.convert("RGB").resize((size, size)).save(path)
    return [path] * count  # one file, read anew for every image (from the page cache)


def run(args) -> list:
    """Measure every loader and worker count; return the table's rows as dicts."""
    torch.set_num_threads(1)  # the loop's share of the machine is one core, for both loaders
    directory = tempfile.mkdtemp(prefix="bench-torch-")
    clusters = {}
    try:
        filenames = make_images(directory, args.images, args.size)
        requests = [{"fetches": "rotated_image", "context": {"filename": f}} for f in filenames]
        loaders = {}
        for workers in WORKER_COUNTS:
            clusters[workers] = LocalCluster(GRAPH_REFERENCE, num_workers=workers).start()
            loaders["pfmq", workers] = DataLoader(IterableDataset(
                clusters[workers], requests, seed=0, batch_size=args.batch_size), batch_size=None)
            loaders["torch", workers] = DataLoader(
                GraphImages(filenames), batch_size=args.batch_size, num_workers=workers,
                persistent_workers=True)
        figures = {key: [] for key in loaders}
        model, optimizer = make_model()
        for loader in loaders.values():  # warm-up: processes, caches, the batch size
            train_epoch(loader, model, optimizer)
        for _ in range(args.repeats):
            for key, loader in loaders.items():
                images, seconds, waited, cpu = train_epoch(loader, model, optimizer)
                assert images == args.images, (key, images)
                figures[key].append((images / seconds, waited / seconds, cpu / images))
        return [row_for(workers, figures) for workers in WORKER_COUNTS]
    finally:
        for cluster in clusters.values():
            cluster.close()
        shutil.rmtree(directory, ignore_errors=True)


def row_for(workers: int, figures: dict) -> dict:
    row = {"workers": workers}
    for kind in ("pfmq", "torch"):
        runs = figures[kind, workers]
        for index, name in enumerate(("images_per_s", "waited", "cpu_s_per_image")):
            row[f"{kind}_{name}"] = statistics.median(run[index] for run in runs)
    row["ratio"] = row["pfmq_images_per_s"] / row["torch_images_per_s"]
    return row


def main(argv=None) -> list:
    """Print the table and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images per epoch")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="measured epochs per loader")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.batch_size, args.repeats = 32, 32, 8, 1
    if min(args.images, args.size, args.batch_size, args.repeats) < 1:
        parser.error("--images, --size, --batch-size and --repeats must be at least 1")
    print(f"training loop fed by pfmq IterableDataset vs torch DataLoader: {args.images} images "
          f"of {args.size}x{args.size}, batches of {args.batch_size}, medians of {args.repeats} "
          f"interleaved epochs on {os.cpu_count()} CPUs")
    rows = run(args)
    print(f"{'workers':>7}  {'pfmq img/s':>10}  {'torch img/s':>11}  {'pfmq/torch':>10}  "
          f"{'pfmq waited':>11}  {'torch waited':>12}  {'pfmq loop CPU':>13}  "
          f"{'torch loop CPU':>14}")
    for row in rows:
        print(f"{row['workers']:>7}  {row['pfmq_images_per_s']:>10.1f}  "
              f"{row['torch_images_per_s']:>11.1f}  {row['ratio']:>10.2f}  "
              f"{row['pfmq_waited']:>11.0%}  {row['torch_waited']:>12.0%}  "
              f"{row['pfmq_cpu_s_per_image'] * 1000:>8.2f} ms/i  "
              f"{row['torch_cpu_s_per_image'] * 1000:>9.2f} ms/i")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fp:
            json.dump({"settings": vars(args), "rows": rows}, fp, indent=2)
    return rows


if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    main()
