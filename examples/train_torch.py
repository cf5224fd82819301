"""Train a small CNN on augmented images from pfmq workers, crash, resume, and check the resume.

The images come from the guide's image graph (:mod:`pythonflow.pfmq.demo.images`: read with
Pillow, noise, random rotation) evaluated by the worker processes of a
:class:`~pythonflow.pfmq.LocalCluster` and batched by :class:`pythonflow.pfmq.torch.IterableDataset`
for a ``DataLoader``. The script trains three times:

1. an uninterrupted run of ``--steps`` steps, for reference;
2. a run that saves a checkpoint (model, optimizer and the dataset's position) at step
   ``--checkpoint-at`` and crashes at step ``--crash-at``, losing its cluster and everything in
   memory;
3. a run on a new cluster of ``--resume-workers`` workers that loads only the checkpoint file and
   trains to the end.

It prints whether every batch after the resume equals, bit for bit, the batch of the
uninterrupted run at the same step, and whether the final weights do; it exits with 1 if not::

    python examples/train_torch.py --steps 24 --checkpoint-at 9 --crash-at 13
"""
import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

import pythonflow as pf
from pythonflow import pfmq
from pythonflow.pfmq.demo.images import build_graph
from pythonflow.pfmq.torch import IterableDataset

CLASSES = ("stripes across", "stripes down", "square")


class SimulatedCrash(RuntimeError):
    """Stands for the machine going down: nothing but the checkpoint file survives it."""


def make_images(directory: str, count: int, size: int) -> list:
    """Write ``count`` small labelled PNG images; return their ``(filename, label)`` pairs."""
    samples = []
    for index in range(count):
        label = index % len(CLASSES)
        rng = np.random.default_rng(index)
        pixels = np.zeros((size, size, 3), np.float32) + rng.uniform(0, 0.3, 3)
        band = slice(size // 4, 3 * size // 4)
        if label == 0:
            pixels[::4] = rng.uniform(0.6, 1, 3)
        elif label == 1:
            pixels[:, ::4] = rng.uniform(0.6, 1, 3)
        else:
            pixels[band, band] = rng.uniform(0.6, 1, 3)
        filename = os.path.join(directory, f"image-{index:03d}.png")
        Image.fromarray(np.uint8(pixels * 255), "RGB").save(filename)
        samples.append((filename, label))
    return samples


def labelled_graph() -> pf.Graph:
    """The demo's image graph plus the placeholder ``label``, fetched alongside the image."""
    graph = build_graph(noise_scale=0.25, max_angle=30.0)
    with graph:
        pf.placeholder("label")
    return graph


def epoch_requests(samples):
    """``requests(epoch)`` for the dataset: every sample once, in an order of the epoch's own."""
    def requests(epoch: int) -> list:
        order = list(samples)
        random.Random(epoch).shuffle(order)
        return [{"fetches": ["rotated_image", "label"],
                 "context": {"filename": filename, "label": label}} for filename, label in order]
    return requests


def make_model() -> tuple:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, len(CLASSES)))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def digest(*tensors) -> str:
    """A fingerprint of tensors' exact bytes."""
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def train(cluster, samples, args, steps: int, checkpoint: Optional[str] = None,
          checkpoint_at: Optional[int] = None, crash_at: Optional[int] = None,
          resume_from: Optional[str] = None) -> tuple:
    """Train until ``steps``; return the batch digests by step and the final weights' digest."""
    model, optimizer = make_model()
    dataset = IterableDataset(cluster, epoch_requests(samples), seed=args.seed,
                              batch_size=args.batch_size)
    step = epoch = 0
    if resume_from is not None:
        state = torch.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dataset.load_state_dict(state["data"])  # its epoch, and where in it
        step, epoch = state["step"], state["data"]["epoch"]
    batches = {}
    loss_function = torch.nn.CrossEntropyLoss()
    while step < steps:
        dataset.set_epoch(epoch)  # keeps a loaded position of this epoch
        for images, labels in DataLoader(dataset, batch_size=None):
            step += 1
            batches[step] = digest(images, labels)
            optimizer.zero_grad()
            loss = loss_function(model(images.permute(0, 3, 1, 2)), labels)
            loss.backward()
            optimizer.step()
            if step == checkpoint_at:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "data": dataset.state_dict(), "step": step}, checkpoint)
            if step == crash_at:
                raise SimulatedCrash(f"crashed at step {step}")
            if step == steps:
                break
        epoch += 1
    print(f"  step {step}: loss {loss.item():.3f}")
    return batches, digest(*model.parameters())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the three trainings and compare; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="labelled images per epoch")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--checkpoint-at", type=int, default=9)
    parser.add_argument("--crash-at", type=int, default=13)
    parser.add_argument("--workers", type=int, default=2, help="workers before the crash")
    parser.add_argument("--resume-workers", type=int, default=1, help="workers after it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.checkpoint_at < args.crash_at <= args.steps:
        parser.error("need 0 < --checkpoint-at < --crash-at <= --steps")
    torch.set_num_threads(1)  # the same arithmetic in every run, for bitwise equal weights
    directory = tempfile.mkdtemp(prefix="train-torch-")
    try:
        samples = make_images(directory, args.images, args.size)
        checkpoint = os.path.join(directory, "checkpoint.pt")
        graph = labelled_graph()
        with pfmq.LocalCluster(graph, num_workers=args.workers) as cluster:
            print(f"uninterrupted run on {args.workers} workers:")
            reference, weights = train(cluster, samples, args, args.steps)
            print(f"run that crashes at step {args.crash_at} "
                  f"(checkpoint at step {args.checkpoint_at}):")
            try:
                train(cluster, samples, args, args.steps, checkpoint, args.checkpoint_at,
                      args.crash_at)
            except SimulatedCrash as crash:
                print(f"  {crash}")
        with pfmq.LocalCluster(graph, num_workers=args.resume_workers) as cluster:
            print(f"resumed from the checkpoint on a new cluster of {args.resume_workers} "
                  f"worker{'s' if args.resume_workers > 1 else ''}:")
            resumed, resumed_weights = train(cluster, samples, args, args.steps,
                                             resume_from=checkpoint)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    after = range(args.checkpoint_at + 1, args.steps + 1)
    same_batches = sorted(resumed) == list(after) and all(
        resumed[step] == reference[step] for step in after)
    print(f"batches of steps {after.start}-{after.stop - 1} equal the uninterrupted run's: "
          f"{'yes' if same_batches else 'NO'}")
    print(f"final weights equal the uninterrupted run's: "
          f"{'yes' if resumed_weights == weights else 'NO'}")
    return 0 if same_batches and resumed_weights == weights else 1


if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    sys.exit(main())
