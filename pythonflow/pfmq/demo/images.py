"""The image transformation graph of the guide, and a picture of its stages side by side.

The graph reads an image with Pillow, multiplies it by random noise and rotates it by a random
angle with scipy: the kind of augmentation a training loop asks for, batch after batch. Its random
numbers come from numpy's global generator and Python's :mod:`random`, the two generators a pfmq
worker seeds per request, so ``imap(requests, seed=s)`` gives the same images on any worker.

The operations call the functions of this module, so the graph pickles by reference: a process
that unpickles it needs pythonflow installed, not the script that built the graph.
"""
import random
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

import pythonflow as pf

__all__ = ["build_graph", "load_image", "make_noise", "add_noise", "random_angle", "rotate",
           "side_by_side"]


def load_image(filename: str) -> np.ndarray:
    """
    Read an image file as RGB floats in ``[0, 1]``.

    Parameters
    ----------
    filename : str
        Any image Pillow reads; other modes (grey, RGBA, palette) are converted to RGB.

    Returns
    -------
    image : numpy.ndarray
        ``float32`` array of shape (height, width, 3).
    """
    with Image.open(filename) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def make_noise(image: np.ndarray, scale: float) -> np.ndarray:
    """
    Draw a multiplicative noise factor per pixel and channel, uniform in ``(1 - scale, 1]``.

    Parameters
    ----------
    image : numpy.ndarray
        The image the noise is for: it gives the shape and dtype.
    scale : float
        The largest fraction by which a pixel is darkened.

    Returns
    -------
    noise : numpy.ndarray
        Array of the shape and dtype of ``image``, from numpy's global generator.
    """
    return (1 - np.random.uniform(0, scale, image.shape)).astype(image.dtype)


def add_noise(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """
    Apply ``noise`` from :func:`make_noise` to ``image``.

    Parameters
    ----------
    image, noise : numpy.ndarray
        Arrays of the same shape.

    Returns
    -------
    noisy_image : numpy.ndarray
        ``image * noise``, still in ``[0, 1]``.
    """
    return image * noise


def random_angle(max_angle: float) -> float:
    """
    Draw an angle in degrees, uniform in ``[-max_angle, max_angle]``, from :mod:`random`.

    Parameters
    ----------
    max_angle : float
        The largest rotation either way.

    Returns
    -------
    angle : float
        The angle in degrees.
    """
    return random.uniform(-max_angle, max_angle)


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """
    Rotate ``image`` by ``angle`` degrees about its centre, keeping its shape.

    Parameters
    ----------
    image : numpy.ndarray
        Array of shape (height, width, channels).
    angle : float
        Degrees, counter-clockwise.

    Returns
    -------
    rotated_image : numpy.ndarray
        The rotated image; corners rotated in from outside are black.
    """
    return ndimage.rotate(image, angle, reshape=False, order=1, mode="constant")


def build_graph(noise_scale: float = 0.25, max_angle: float = 45.0) -> pf.Graph:
    """
    Build the image transformation graph.

    Parameters
    ----------
    noise_scale : float
        Pixels are darkened by a random fraction up to ``noise_scale``.
    max_angle : float
        Images are rotated by a random angle in ``[-max_angle, max_angle]`` degrees.

    Returns
    -------
    graph : pythonflow.Graph
        Graph with the placeholder ``filename`` and the operations ``image``, ``noise``,
        ``noisy_image``, ``angle`` and ``rotated_image``.
    """
    with pf.Graph() as graph:
        filename = pf.placeholder("filename")
        image = pf.func_op(load_image, filename).set_name("image")
        noise = pf.func_op(make_noise, image, noise_scale).set_name("noise")
        noisy_image = pf.func_op(add_noise, image, noise).set_name("noisy_image")
        angle = pf.func_op(random_angle, max_angle).set_name("angle")
        pf.func_op(rotate, noisy_image, angle).set_name("rotated_image")
    return graph


#: Height in pixels of the band above the images that holds their labels.
CAPTION_HEIGHT = 18


def side_by_side(images: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None,
                 gap: int = 8) -> Image.Image:
    """
    Compose RGB float images in ``[0, 1]`` into one picture, left to right.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Arrays of shape (height, width, 3); values outside ``[0, 1]`` are clipped.
    labels : sequence of str, optional
        One caption per image, written in a white band of :data:`CAPTION_HEIGHT` pixels above the
        images; without labels there is no band.
    gap : int
        White pixels between neighbouring images.

    Returns
    -------
    picture : PIL.Image.Image
        The RGB picture; save it with ``picture.save(path)``.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    top = CAPTION_HEIGHT if labels is not None else 0
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    picture = Image.new("RGB", (width, top + height), "white")
    draw = ImageDraw.Draw(picture)
    left = 0
    for index, image in enumerate(images):
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        picture.paste(Image.fromarray(pixels, "RGB"), (left, top))
        if labels is not None:
            draw.text((left + 2, 3), labels[index], fill="black")
        left += image.shape[1] + gap
    return picture
