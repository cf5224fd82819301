"""The image transformation graph of the distributed data preparation guide, in one process.

The graph (:func:`pythonflow.pfmq.demo.images.build_graph`) reads an image, multiplies it by
random noise and rotates it by a random angle. Run the script to see the stages side by side::

    python examples/image_transformation.py --image photo.jpg --output stages.png --seed 3

The graph is importable as ``examples.image_transformation:graph``; workers use the same one as
``pythonflow.pfmq.demo:build_graph``.
"""
import argparse
import os
import random
from typing import Optional, Sequence

import numpy as np

from pythonflow.data import sample_image_path
from pythonflow.pfmq.demo.images import build_graph, side_by_side

__all__ = ["SAMPLE_IMAGE", "build_graph", "graph", "main", "side_by_side"]

SAMPLE_IMAGE = sample_image_path()
STAGES = ("image", "noisy_image", "rotated_image")
LABELS = ("original", "noisy", "rotated")

graph = build_graph()


def main(argv: Optional[Sequence[str]] = None) -> str:
    """
    Transform an image, write its stages side by side and print the path of the picture.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default: ``sys.argv[1:]``); see ``--help``.

    Returns
    -------
    path : str
        Absolute path of the PNG written.
    """
    parser = argparse.ArgumentParser(description="Show the stages of the image transformation.")
    parser.add_argument("--image", default=SAMPLE_IMAGE, help="input image (default: sample)")
    parser.add_argument("--output", default="image_transformation.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed the random generators, for a reproducible picture")
    args = parser.parse_args(argv)
    if args.seed is not None:  # the graph draws from both generators
        np.random.seed(args.seed)
        random.seed(args.seed)

    stages = graph(list(STAGES), filename=args.image)
    side_by_side(stages, LABELS).save(args.output, format="PNG")
    path = os.path.abspath(args.output)
    print(path)
    return path


if __name__ == "__main__":
    main()
