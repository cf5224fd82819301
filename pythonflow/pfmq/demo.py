"""The image transformation pipeline and the ``pfmq demo`` command that runs it on a local cluster.

The graph reads an image with Pillow, scales it to ``[0, 1]``, multiplies it with random noise and
rotates it by a random angle with scipy: the kind of augmentation a training loop asks for, batch
after batch. Workers import it as ``pythonflow.pfmq.demo:build_graph``.
"""
import os
import random
import sys
import tempfile
import time
from typing import Optional

import numpy as np

import pythonflow as pf

from . import launch
from .cluster import LocalCluster

#: How workers find the graph: they import this module and call :func:`build_graph`.
GRAPH_REFERENCE = "pythonflow.pfmq.demo:build_graph"


def load_image(filename: str) -> np.ndarray:
    """Read an image file as a ``float32`` RGB array with values in ``[0, 1]``."""
    from PIL import Image

    with Image.open(filename) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def add_noise(image: np.ndarray, scale: float) -> np.ndarray:
    """Darken each pixel by a random fraction up to ``scale`` (numpy's global generator, which
    ``imap(..., seed=s)`` seeds per request)."""
    return image * (1 - np.random.uniform(0, scale, image.shape)).astype(image.dtype)


def random_angle(max_angle: float) -> float:
    """A random angle in degrees between ``-max_angle`` and ``max_angle``."""
    return random.uniform(-max_angle, max_angle)


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate ``image`` by ``angle`` degrees about its centre, keeping its shape."""
    from scipy import ndimage

    return ndimage.rotate(image, angle, reshape=False, order=1, mode="constant")


def build_graph(noise_scale: float = 0.25, max_angle: float = 45.0) -> pf.Graph:
    """The image transformation graph.

    Feed ``filename``; fetch ``image`` (the original), ``noisy_image``, ``angle`` or
    ``rotated_image``.
    """
    # Import the heavy libraries now, so that a worker pays for them when it starts rather than
    # in its first request.
    import PIL.Image  # noqa: F401
    import scipy.ndimage  # noqa: F401

    with pf.Graph() as graph:
        filename = pf.placeholder("filename")
        image = pf.func_op(load_image, filename).set_name("image")
        noisy_image = pf.func_op(add_noise, image, noise_scale).set_name("noisy_image")
        angle = pf.func_op(random_angle, max_angle).set_name("angle")
        pf.func_op(rotate, noisy_image, angle).set_name("rotated_image")
    return graph


def sample_image_path() -> str:
    """The sample image shipped with pythonflow, or a generated one if it is not installed."""
    try:
        from pythonflow.data import sample_image_path as shipped

        return shipped()
    except (ImportError, OSError):  # installed without its data files
        pass
    from PIL import Image

    path = os.path.join(tempfile.mkdtemp(prefix="pfmq-demo-"), "sample.png")
    y, x = np.mgrid[0:256, 0:256] / 255.0
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(8 * np.pi * x * y)], axis=-1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def save_comparison(images, labels, path: str) -> None:
    """Write ``images`` (float arrays in ``[0, 1]``) side by side, labelled, as one PNG."""
    from PIL import Image, ImageDraw

    gap, caption = 8, 18
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for image, label in zip(images, labels):
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(pixels), (left, caption))
        draw.text((left + 2, 3), label, fill="black")
        left += image.shape[1] + gap
    canvas.save(path, format="PNG")


def _throughput(cluster, requests, description: str) -> float:
    from tqdm import tqdm

    started = time.perf_counter()
    # len(task) lets tqdm show the total.
    for _ in tqdm(cluster.imap(requests, seed=0), desc=description, unit="image",
                  file=sys.stderr, leave=False):
        pass
    return len(requests) / (time.perf_counter() - started)


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
            rates[count] = _throughput(cluster, requests, label)
            print(f"  {label:<11} {rates[count]:8.1f} images/s")
            if count == workers:
                original, noisy, rotated = cluster.apply(
                    {"fetches": ["image", "noisy_image", "rotated_image"],
                     "context": {"filename": filename}}, seed=0)
    if workers > 1:
        print(f"  speed-up    {rates[workers] / rates[1]:8.2f}x with {workers} workers")
    save_comparison([original, noisy, rotated], ["original", "noisy", "rotated"], output)
    print(f"wrote {os.path.abspath(output)}")
    return 0
