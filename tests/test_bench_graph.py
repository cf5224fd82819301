import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_graph_reports_both_shapes(capsys):
    spec = importlib.util.spec_from_file_location(
        '_bench_graph', os.path.join(ROOT, 'benchmarks', 'bench_graph.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(['--size', '2000', '--repeats', '2'])
    assert [row[0] for row in rows] == ['chain', 'wide']
    assert all(row[1] == 2000 and row[2] > 0 for row in rows)
    assert 'median ops/s' in capsys.readouterr().out
