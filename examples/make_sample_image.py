"""Generate the sample image used by the examples and the ``pfmq demo`` command.

The picture is computed, not photographed: colour gradients with a few shapes on top, so that
noise and rotation are easy to see. Running the script rewrites both copies::

    python examples/make_sample_image.py
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DESTINATIONS = [os.path.join(ROOT, "docs", "sample.png"),
                os.path.join(ROOT, "pythonflow", "data", "sample.png")]


def make_sample_image(size: int = 256) -> Image.Image:
    """
    Return a deterministic, colourful RGB test image.

    Parameters
    ----------
    size : int
        Width and height in pixels.

    Returns
    -------
    image : PIL.Image.Image
        The image.
    """
    coordinates = np.linspace(0.0, 1.0, size)
    x, y = np.meshgrid(coordinates, coordinates)
    radius = np.hypot(x - 0.5, y - 0.5)
    pixels = np.stack([x, y, 0.5 + 0.5 * np.cos(12 * np.pi * radius)], axis=-1)
    image = Image.fromarray(np.round(255 * pixels).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    unit = size / 16
    draw.rectangle([2 * unit, 2 * unit, 6 * unit, 6 * unit], fill=(230, 40, 40),
                   outline=(255, 255, 255), width=max(1, size // 128))
    draw.ellipse([10 * unit, 2.5 * unit, 14 * unit, 6.5 * unit], fill=(250, 210, 30))
    draw.polygon([(8 * unit, 8.5 * unit), (12.5 * unit, 14 * unit), (3.5 * unit, 14 * unit)],
                 fill=(30, 90, 220))
    draw.line([(0, size - 1), (size - 1, 0)], fill=(0, 0, 0), width=max(1, size // 64))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the sample image.")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("outputs", nargs="*", default=DESTINATIONS,
                        help="files to write (default: docs/ and pythonflow/data/)")
    args = parser.parse_args()
    image = make_sample_image(args.size)
    for output in args.outputs:
        image.save(output, optimize=True)
        print(output)


if __name__ == "__main__":
    main()
