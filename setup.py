"""Packaging for pythonflow and pythonflow.pfmq."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "README.rst"), encoding="utf-8") as fp:
    LONG_DESCRIPTION = fp.read()
# The version is said once, in the package; read as text so that packaging imports nothing.
with open(os.path.join(HERE, "pythonflow", "__init__.py"), encoding="utf-8") as fp:
    VERSION = re.search(r'^__version__ = "([^"]+)"', fp.read(), re.MULTILINE).group(1)

DEMO = ["scipy", "pillow", "tqdm"]
MSGPACK = ["msgpack>=1.0"]
IPYPARALLEL = ["ipyparallel>=8"]
# Pinned: a looser requirement lets pip take a CUDA build of several GB where a CPU one will do.
TORCH = ["torch==2.13.0"]
PROMETHEUS = ["prometheus_client>=0.12"]
# The guide's pictures run the demo's image graph, and the performance chart is matplotlib's.
DOCS = ["sphinx>=7", "matplotlib>=3.6"] + DEMO
TEST = ["pytest>=7", "pytest-timeout>=2"] + MSGPACK + IPYPARALLEL + PROMETHEUS + DOCS

setup(
    name="pythonflow",
    version=VERSION,
    description="Lazy dataflow graphs and distributed data preparation over ZeroMQ",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    packages=find_packages(include=["pythonflow", "pythonflow.*"]),
    package_data={"pythonflow": ["py.typed"], "pythonflow.data": ["sample.png"]},
    python_requires=">=3.9",
    install_requires=["pyzmq>=22", "numpy"],
    extras_require={
        "demo": DEMO,
        "msgpack": MSGPACK,
        "ipyparallel": IPYPARALLEL,
        "torch": TORCH,
        "prometheus": PROMETHEUS,
        "docs": DOCS,
        "test": TEST,
    },
    entry_points={"console_scripts": ["pfmq=pythonflow.pfmq.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
