"""Where each concern of pythonflow.pfmq lives, and what its modules promise to their readers."""
import ast
import os

import pytest

from pythonflow import pfmq
from pythonflow.pfmq import errors, protocol

PFMQ = os.path.dirname(os.path.abspath(pfmq.__file__))


def parse(module: str) -> ast.Module:
    with open(os.path.join(PFMQ, f"{module}.py"), encoding="utf-8") as file:
        return ast.parse(file.read())


def test_errors_is_a_leaf_holding_every_exception_the_package_raises_at_users():
    imports = [node for node in ast.walk(parse("errors"))
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    ours = [node for node in imports if isinstance(node, ast.ImportFrom) and
            (node.level or (node.module or "").startswith("pythonflow"))]
    assert not ours, "errors.py imports nothing of the package"
    for name in errors.__all__:
        exception = getattr(errors, name)
        assert issubclass(exception, Exception) and exception.__module__ == errors.__name__
        assert getattr(pfmq, name) is exception and name in pfmq.__all__


@pytest.mark.parametrize("outcome, expected", [
    ((protocol.SERIALIZATION_ERROR, "bad bytes"), pfmq.SerializationError),
    ((protocol.WORKERS_DIED, "they died"), pfmq.WorkerDiedError),
    ((protocol.ERROR, None, "Traceback ..."), pfmq.RemoteError),
    ((protocol.ERROR, KeyError("k"), "Traceback ..."), KeyError),
    ((protocol.ERROR, StopIteration(), "Traceback ..."), RuntimeError),
    ((protocol.ITERATOR_FAILED, OSError("disk")), OSError),
    ((99,), pfmq.RemoteError),
])
def test_each_failed_outcome_stands_for_one_exception(outcome, expected):
    exception = protocol.exception_for(3, outcome)
    assert type(exception) is expected
    if expected is not OSError:
        assert "request 3" in str(exception) or "request 3" in str(exception.__cause__)
