"""What the workers of the pfmq benchmark compute, whichever system carries the work.

pfmq, raw pyzmq and ``multiprocessing.Pool`` run these same functions, so the figures compare the
systems, not the work. They live at module level so that worker processes can import them.
"""
import time
from typing import Tuple

import numpy as np

SLEEP = 0.010  # seconds each W3 request takes


def divide(pair: Tuple[float, float]) -> float:
    """Return ``pair[0] / pair[1]``: the W1 and W4 work of the baselines."""
    return pair[0] / pair[1]


def divide_request(request: dict) -> float:
    """Return ``x / y`` from the context of a ``{'fetches': ..., 'context': {...}}`` request."""
    return request["context"]["x"] / request["context"]["y"]


def add_one(array: np.ndarray) -> np.ndarray:
    """Return ``array + 1``: the W2 work."""
    return array + 1


def nap(item):
    """Sleep :data:`SLEEP` seconds and return ``item``: the W3 work."""
    time.sleep(SLEEP)
    return item


def check_half(value: float) -> None:
    """Raise :class:`RuntimeError` unless a W4 round trip answered 0.5."""
    if value != 0.5:
        raise RuntimeError(f"a round trip answered {value!r}, not 0.5")
