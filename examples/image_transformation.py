"""The image transformation graph of the distributed data preparation guide.

An image is read with Pillow, multiplied by random noise and rotated by a random angle. Every
step is an operation on imported modules (``pf.import_``), so the graph pickles without this file
being importable where it is evaluated. Run the script to see the three stages side by side::

    python examples/image_transformation.py --image photo.jpg --output stages.png

The graph is importable as ``examples.image_transformation:graph``.
"""
import argparse
import os

import numpy as np
from PIL import Image

import pythonflow as pf

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_IMAGE = os.path.join(os.path.dirname(HERE), "docs", "sample.png")


def build_graph(noise_scale: float = 0.25) -> pf.Graph:
    """
    Build the image transformation graph.

    Parameters
    ----------
    noise_scale : float
        Pixels are multiplied by noise drawn uniformly from ``[1 - noise_scale, 1)``.

    Returns
    -------
    graph : pythonflow.Graph
        Graph with the placeholder ``filename`` and the operations ``image`` (RGB floats in
        [0, 1], height x width x 3), ``noise``, ``noisy_image``, ``angle`` (degrees in
        [0, 360)) and ``rotated_image``.
    """
    with pf.Graph() as graph:
        np_ = pf.import_("numpy")
        pil_image = pf.import_("PIL.Image")
        ndimage = pf.import_("scipy.ndimage")

        filename = pf.placeholder("filename")
        rgb = pil_image.open(filename).convert("RGB")
        image = (np_.asarray(rgb, dtype="float64") / 255.0).set_name("image")
        noise = (1.0 - np_.random.uniform(0.0, noise_scale, image.shape)).set_name("noise")
        noisy_image = (image * noise).set_name("noisy_image")
        angle = np_.random.uniform(0.0, 360.0).set_name("angle")
        ndimage.rotate(noisy_image, angle, reshape=False).set_name("rotated_image")
    return graph


graph = build_graph()


def side_by_side(images: list, gap: int = 8) -> Image.Image:
    """
    Compose float RGB images in [0, 1] of equal height into one picture, left to right.

    Parameters
    ----------
    images : list[numpy.ndarray]
        Images of shape (height, width, 3).
    gap : int
        White pixels between images.

    Returns
    -------
    picture : PIL.Image.Image
        The composed RGB picture.
    """
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    left = 0
    for image in images:
        pixels = np.round(255 * np.clip(image, 0.0, 1.0)).astype(np.uint8)
        picture.paste(Image.fromarray(pixels, "RGB"), (left, 0))
        left += image.shape[1] + gap
    return picture


def main(argv=None) -> str:
    """Transform an image, write the stages side by side and return the output path."""
    parser = argparse.ArgumentParser(description="Show the stages of the image transformation.")
    parser.add_argument("--image", default=SAMPLE_IMAGE, help="input image (default: sample)")
    parser.add_argument("--output", default="image_transformation.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=None, help="seed numpy's generator")
    args = parser.parse_args(argv)
    if args.seed is not None:
        np.random.seed(args.seed)

    context = {"filename": args.image}
    graph("rotated_image", context)  # fills the context with every intermediate image
    stages = [context[graph[name]] for name in ("image", "noisy_image", "rotated_image")]
    side_by_side(stages).save(args.output)
    path = os.path.abspath(args.output)
    print(path)
    return path


if __name__ == "__main__":
    main()
