"""The network namespaces of the partition tests: :mod:`pythonflow.pfmq.bench.netns` (the soak
benchmark uses them too), under the name the tests import."""
from pythonflow.pfmq.bench.netns import Network, remove_stale_namespaces, unavailable

__all__ = ["Network", "remove_stale_namespaces", "unavailable"]
