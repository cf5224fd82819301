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


def test_one_module_serialises_and_the_old_address_only_points_there():
    from pythonflow.pfmq import serialization, serializers

    for name in serializers.__all__:
        assert getattr(serializers, name) is getattr(serialization, name)
    definitions = [node for node in parse("serializers").body
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))
                   and not (isinstance(node, ast.Assign) and node.targets[0].id == "__all__")]
    assert not definitions, "serializers.py defines nothing of its own"
    imported = {node.module for node in ast.walk(parse("serialization"))
                if isinstance(node, ast.ImportFrom)}
    assert "serializers" not in imported
    assert isinstance(serialization.make_serializer(serializer="msgpack"),
                      serialization.MsgpackSerializer)


def test_shared_pieces_live_with_their_concern_not_in_a_common_module():
    from pythonflow.pfmq import lifecycle, liveness, security, transport

    assert not os.path.exists(os.path.join(PFMQ, "common.py"))
    homes = {transport: ["check_address", "dealer", "waiting_messages", "Wakeup",
                         "RateLimitedLogger"],
             security: ["resolve_key", "key_hint"], lifecycle: ["Service"],
             liveness: ["HEARTBEAT_INTERVAL", "HEARTBEAT_LIVENESS"]}
    for module, names in homes.items():
        for name in names:
            assert name in module.__all__, (module.__name__, name)
            value = getattr(module, name)
            assert getattr(value, "__module__", module.__name__) == module.__name__
