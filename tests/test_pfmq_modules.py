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


#: The library's modules whose public signatures are fully typed and whose names are listed.
TYPED = ["errors", "protocol", "serialization", "serializers", "transport", "security", "zap",
         "broker", "scheduler", "records", "worker", "jobs", "connections", "lifecycle",
         "liveness"]


def public_functions(tree: ast.Module):
    """(qualified name, node) of every public function and method, at any depth of classes."""
    def walk(node, prefix, public):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.",
                                public and not child.name.startswith("_"))
            elif isinstance(child, ast.FunctionDef) and public and (
                    not child.name.startswith("_") or child.name == "__init__"):
                yield prefix + child.name, child
    return list(walk(tree, "", True))


@pytest.mark.parametrize("module", TYPED)
def test_public_signatures_are_typed_and_listed_in_all(module):
    tree = parse(module)
    assert any(isinstance(node, ast.Assign) and node.targets[0].id == "__all__"
               for node in tree.body if isinstance(node, ast.Assign)), "no __all__"
    untyped = []
    for name, function in public_functions(tree):
        arguments = function.args
        for argument in (arguments.posonlyargs + arguments.args + arguments.kwonlyargs
                         + [arguments.vararg, arguments.kwarg]):
            if argument is not None and argument.arg not in ("self", "cls") and (
                    argument.annotation is None):
                untyped.append(f"{name}({argument.arg})")
        if function.returns is None and name.rpartition(".")[2] != "__init__":
            untyped.append(f"{name} -> ?")
    assert not untyped


def test_the_version_is_said_once():
    import subprocess
    import sys

    import pythonflow

    root = os.path.dirname(os.path.dirname(PFMQ))
    with open(os.path.join(root, "setup.py"), encoding="utf-8") as file:
        assert pythonflow.__version__ not in file.read()
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == pythonflow.__version__


def test_the_package_docstring_maps_every_module_of_the_library():
    modules = sorted(name for name in os.listdir(PFMQ)
                     if name.endswith(".py") and name not in ("__init__.py", "__main__.py"))
    missing = [name for name in modules if name not in pfmq.__doc__]
    assert not missing, "add them to the map in pythonflow/pfmq/__init__.py"
