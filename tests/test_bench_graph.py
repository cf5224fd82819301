"""The graph benchmark runs, in a tiny configuration, and says when its baseline is missing."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location(
        '_bench_graph', os.path.join(ROOT, 'benchmarks', 'bench_graph.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ['--size', '300', '--repeats', '2', '--sample-seconds', '0.001']


def test_tiny_run_reports_every_comparison_without_the_baseline(bench, capsys, monkeypatch):
    monkeypatch.delenv(bench.ENVIRONMENT_VARIABLE, raising=False)
    result = bench.main(TINY)
    out = capsys.readouterr().out
    assert 'Pythonflow 0.3.0 ABSENT' in out and 'ratio pythonflow / plain function' in out
    assert set(result['small']) == {'pythonflow', 'plain function'}
    assert all(value > 0 for value in result['small'].values())
    names = {(label, name) for label, name, size, rate in result['large']}
    assert names == {(label, name) for label in ('chain', 'wide') for name in (
        'pythonflow', 'pythonflow, first evaluation', 'pythonflow, second evaluation')}
    assert all(size == 300 and rate > 0 for _, _, size, rate in result['large'])


def test_missing_baseline_directory_is_a_clear_error(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match='no Pythonflow 0.3.0 package in'):
        bench.main(TINY + ['--pythonflow-030', str(tmp_path)])


@pytest.mark.skipif(not os.environ.get('PYTHONFLOW_030'), reason='PYTHONFLOW_030 is not set')
def test_tiny_run_against_the_baseline(bench, capsys):
    result = bench.main(TINY)
    assert 'pythonflow 0.3.0' in result['small']
    assert 'speed-up over Pythonflow 0.3.0' in capsys.readouterr().out
