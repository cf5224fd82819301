import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')


def _load(name):
    spec = importlib.util.spec_from_file_location(f'_example_{name}',
                                                  os.path.join(EXAMPLES, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def example():
    return _load('image_transformation')


def test_pipeline_shapes_ranges_and_intermediates(example):
    np.random.seed(0)
    context = {'filename': example.SAMPLE_IMAGE}
    rotated = example.graph('rotated_image', context)
    graph = example.graph
    image, noise, noisy = (context[graph[name]] for name in ('image', 'noise', 'noisy_image'))
    assert image.shape == noise.shape == noisy.shape == rotated.shape == (256, 256, 3)
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1
    assert 0.75 <= noise.min() and noise.max() <= 1
    np.testing.assert_allclose(noisy, image * noise)
    assert 0 <= context[graph['angle']] < 360
    assert np.isfinite(rotated).all() and -0.2 < rotated.min() and rotated.max() < 1.2
    assert not np.allclose(rotated, noisy)


def test_pipeline_is_deterministic_with_seed(example):
    results = []
    for _ in range(2):
        np.random.seed(42)
        results.append(example.graph('rotated_image', filename=example.SAMPLE_IMAGE))
    np.random.seed(43)
    other = example.graph('rotated_image', filename=example.SAMPLE_IMAGE)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], other)


def test_graph_pickles_without_the_example_module(example):
    restored = pickle.loads(pickle.dumps(example.graph))
    np.random.seed(1)
    assert restored('noisy_image', filename=example.SAMPLE_IMAGE).shape == (256, 256, 3)
    assert example.build_graph(noise_scale=0.5) is not example.graph


def test_script_writes_side_by_side_png(tmp_path):
    output = tmp_path / 'stages.png'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'image_transformation.py'), '--output',
         str(output), '--seed', '3'], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    with Image.open(output) as picture:
        assert picture.mode == 'RGB' and picture.size == (3 * 256 + 2 * 8, 256)


def test_sample_images_are_reproducible_and_bundled():
    from pythonflow.data import sample_image_path

    generated = np.asarray(_load('make_sample_image').make_sample_image())
    for path in (os.path.join(ROOT, 'docs', 'sample.png'), sample_image_path()):
        with Image.open(path) as image:
            assert image.size == (256, 256) and image.mode == 'RGB'
            np.testing.assert_array_equal(np.asarray(image), generated)
