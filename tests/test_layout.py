"""The package layout: the library in pythonflow/pfmq/, demo, bench and integrations beside it.

The sub-packages are built on the library and never imported by it, importing the library pulls
in none of their optional dependencies, no module-level imports form a cycle, and a build of the
distribution carries the sub-packages so that ``pfmq bench`` runs from an installed copy.
"""
import ast
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "pythonflow")
SUBPACKAGES = ("pythonflow.pfmq.demo", "pythonflow.pfmq.bench", "pythonflow.pfmq.integrations")
# Only the command line, the front of everything, reaches into the sub-packages; and
# pythonflow.pfmq.torch, the short name of the PyTorch integration, which nothing imports.
FRONTS = ("pythonflow.pfmq.cli", "pythonflow.pfmq.__main__", "pythonflow.pfmq.torch")


def modules():
    """Module name -> (path, whether it is a package's ``__init__``) for every module here."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(directory, file)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                is_package = name.endswith(".__init__")
                found[name[:-len(".__init__")] if is_package else name] = (path, is_package)
    return found


def imported_names(path, package, top_level_only):
    """Every module name that the imports of ``path`` may load (relative ones resolved)."""
    with open(path, encoding="utf-8") as stream:
        tree = ast.parse(stream.read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = node.module if not node.level else ".".join(filter(None, [base,
                                                                               node.module]))
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)  # submodules
    return names


def import_graph(top_level_only):
    """Module -> the modules of this package it imports (the packages it is in left out:
    Python has begun importing those before the module itself)."""
    found = modules()
    graph = {}
    for name, (path, is_package) in found.items():
        package = name if is_package else name.rpartition(".")[0]
        parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
        graph[name] = {other for other in imported_names(path, package, top_level_only)
                       if other in found and other != name and other not in parents}
    return graph


def test_the_sub_packages_exist_where_the_layout_says():
    names = modules()
    for name in ("pythonflow.pfmq.demo", "pythonflow.pfmq.demo.images", "pythonflow.pfmq.bench",
                 "pythonflow.pfmq.bench.suite", "pythonflow.pfmq.bench.baselines",
                 "pythonflow.pfmq.bench.harness", "pythonflow.pfmq.bench.work",
                 "pythonflow.pfmq.integrations",
                 "pythonflow.pfmq.integrations.ipyparallel"):
        assert name in names, name
    for old in ("demo", "images", "benchmark", "baselines", "ipyparallel"):  # moved, not copied
        assert not os.path.exists(os.path.join(PACKAGE, "pfmq", f"{old}.py")), old


def test_the_library_never_imports_the_sub_packages():
    graph = import_graph(top_level_only=False)  # imports inside functions count too
    library = [name for name in graph if name.startswith("pythonflow")
               and not name.startswith(SUBPACKAGES) and name not in FRONTS]
    assert "pythonflow.pfmq.broker" in library and "pythonflow.pfmq.launch" in library
    for name in library:
        assert not {other for other in graph[name] if other.startswith(SUBPACKAGES)}, name


def test_no_module_level_import_cycle():
    graph = import_graph(top_level_only=True)
    done, path = set(), []

    def visit(name):
        path.append(name)
        for other in sorted(graph[name]):
            assert other not in path, " -> ".join(path[path.index(other):] + [other])
            if other not in done:
                visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    assert "pythonflow.pfmq.bench.harness" in graph["pythonflow.pfmq.bench.baselines"]


def run_python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, **kwargs)


def test_importing_the_library_loads_no_optional_dependency():
    result = run_python(
        "import sys; import pythonflow; from pythonflow import pfmq; import pythonflow.pfmq.cli; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in "
        "{'PIL', 'scipy', 'tqdm', 'matplotlib', 'ipyparallel', 'torch'} or m.startswith(%r)))"
        % (SUBPACKAGES,), env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["pythonflow.pfmq.demo.images", "pythonflow.pfmq.demo",
                                    "pythonflow.pfmq.bench.harness", "pythonflow.pfmq.bench.work",
                                    "pythonflow.pfmq.bench.baselines",
                                    "pythonflow.pfmq.bench.suite", "pythonflow.pfmq.bench",
                                    "pythonflow.pfmq.integrations.ipyparallel"])
def test_each_sub_package_module_imports_first(module):
    # Imported before anything else of pythonflow, as a worker process or a script would.
    result = run_python(f"import {module}", env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_a_build_carries_the_sub_packages_and_pfmq_bench_runs_from_it(tmp_path):
    build = tmp_path / "build"
    result = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                             str(build)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    library = build / "lib"
    for path in ("pfmq/bench/suite.py", "pfmq/bench/baselines.py", "pfmq/bench/harness.py",
                 "pfmq/bench/work.py", "pfmq/demo/__init__.py", "pfmq/demo/images.py",
                 "pfmq/integrations/ipyparallel.py", "data/sample.png"):
        assert (library / "pythonflow" / path).is_file(), path
    # Only the built copy is importable, from a directory outside the checkout.
    environment = dict(os.environ, PYTHONPATH=str(library))
    environment.pop("PFMQ_KEY", None)
    result = run_python("import pythonflow, sys; from pythonflow.pfmq.cli import main; "
                        "print(pythonflow.__file__, flush=True); "
                        "sys.exit(main(['bench', '--quick', '--workloads', 'W4']))",
                        env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(library / "pythonflow" / "__init__.py"))
    assert "p50 latency, ms" in result.stdout and "W4 done in" in result.stderr
