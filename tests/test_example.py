"""The image graph (pythonflow.pfmq.demo.images), its example script and the sample image."""
import importlib.util
import io
import os
import pickle
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import pythonflow.data
from pythonflow import pfmq
from pythonflow.pfmq import demo
from pythonflow.pfmq.demo import images
from pythonflow.pfmq.worker import seed_generators

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, 'examples')


def _load(name):
    spec = importlib.util.spec_from_file_location(f'_example_{name}',
                                                  os.path.join(EXAMPLES, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(value):
    np.random.seed(value)
    random.seed(value)


@pytest.fixture(scope='module')
def example():
    return _load('image_transformation')


def test_one_graph_for_example_and_demo(example):
    assert example.build_graph is demo.build_graph is images.build_graph
    assert example.side_by_side is images.side_by_side
    assert demo.GRAPH_REFERENCE == 'pythonflow.pfmq.demo:build_graph'
    assert example.SAMPLE_IMAGE == pythonflow.data.sample_image_path()


def test_pipeline_shapes_ranges_and_intermediates(example):
    _seed(0)
    context = {'filename': example.SAMPLE_IMAGE}
    rotated = example.graph('rotated_image', context)
    graph = example.graph
    image, noise, noisy = (context[graph[name]] for name in ('image', 'noise', 'noisy_image'))
    assert image.shape == noise.shape == noisy.shape == rotated.shape == (256, 256, 3)
    assert image.dtype == noise.dtype == noisy.dtype == rotated.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1
    with Image.open(example.SAMPLE_IMAGE) as raw:
        np.testing.assert_allclose(image * 255, np.asarray(raw), atol=1e-3)
    assert 0.75 <= noise.min() and noise.max() <= 1 and noise.std() > 0.05
    np.testing.assert_array_equal(noisy, image * noise)
    angle = context[graph['angle']]
    assert -45 <= angle <= 45 and angle != 0
    assert np.isfinite(rotated).all() and 0 <= rotated.min() and rotated.max() <= 1
    assert not np.allclose(rotated, noisy)
    np.testing.assert_allclose(rotated, images.rotate(noisy, angle))
    # Rotation about the centre keeps the centre pixel.
    np.testing.assert_allclose(rotated[128, 128], noisy[128, 128], atol=0.05)


def test_pipeline_is_deterministic_with_both_seeds(example):
    def evaluate(numpy_seed, python_seed):
        np.random.seed(numpy_seed)
        random.seed(python_seed)
        return example.graph(['noise', 'angle', 'rotated_image'], filename=example.SAMPLE_IMAGE)

    first, again = evaluate(42, 42), evaluate(42, 42)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other_noise, other_angle = evaluate(43, 42), evaluate(42, 43)
    assert not np.array_equal(first[0], other_noise[0]) and first[1] == other_noise[1]
    np.testing.assert_array_equal(first[0], other_angle[0])
    assert first[1] != other_angle[1]


def test_graph_pickles_by_reference_to_the_package(example):
    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            modules.add(module)
            return super().find_class(module, name)

    modules = set()
    restored = Recorder(io.BytesIO(pickle.dumps(example.graph))).load()
    assert 'pythonflow.pfmq.demo.images' in modules
    assert all(module.startswith(('pythonflow.', 'builtins')) for module in modules), modules
    results = []
    for graph in (example.graph, restored):
        _seed(1)
        results.append(graph('rotated_image', filename=example.SAMPLE_IMAGE))
    np.testing.assert_array_equal(*results)


def test_graph_options_take_effect(example):
    _seed(2)
    noise, angle = example.build_graph(noise_scale=0.5, max_angle=5.0)(
        ['noise', 'angle'], filename=example.SAMPLE_IMAGE)
    # 196,608 draws in (0.5, 1]: some fall below the default range's floor of 0.75.
    assert 0.5 <= noise.min() < 0.75 and noise.max() <= 1
    assert -5 <= angle <= 5 and angle != 0
    _seed(2)
    noise, angle = example.build_graph(noise_scale=0.0, max_angle=0.0)(
        ['noise', 'angle'], filename=example.SAMPLE_IMAGE)
    assert (noise == 1).all() and angle == 0


def test_seeded_imap_on_a_worker_matches_local_evaluation(example):
    requests = [{'fetches': 'rotated_image', 'context': {'filename': example.SAMPLE_IMAGE}}] * 3
    with pfmq.Broker('tcp://127.0.0.1:*') as broker:
        worker = pfmq.Worker.from_graph(demo.build_graph(), broker.backend_address)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            served = list(broker.imap(requests, seed=7))
            again = list(broker.imap(requests, seed=7))
        finally:
            worker.cancel()
            thread.join(10)
    assert not thread.is_alive()
    for index, image in enumerate(served):
        seed_generators(7, index)
        np.testing.assert_array_equal(image, example.graph('rotated_image',
                                                           filename=example.SAMPLE_IMAGE))
        np.testing.assert_array_equal(image, again[index])
    assert not np.array_equal(served[0], served[1])


def test_side_by_side_layout():
    red = np.zeros((4, 3, 3), np.float32)
    red[..., 0] = 1
    blue = np.zeros((2, 5, 3), np.float32)
    blue[..., 2] = 2  # clipped to 1
    picture = np.asarray(images.side_by_side([red, blue], gap=2))
    assert picture.shape == (4, 3 + 2 + 5, 3)
    assert (picture[:4, :3] == [255, 0, 0]).all()
    assert (picture[:, 3:5] == 255).all() and (picture[2:, 5:] == 255).all()
    assert (picture[:2, 5:] == [0, 0, 255]).all()
    labelled = np.asarray(images.side_by_side([red, blue], ['a', 'b'], gap=2))
    top = images.CAPTION_HEIGHT
    assert labelled.shape == (top + 4, 10, 3)
    np.testing.assert_array_equal(labelled[top:], picture)
    assert (labelled[:top] < 128).any()  # the captions are drawn
    with pytest.raises(ValueError, match='2 images but 1 labels'):
        images.side_by_side([red, blue], ['a'])


def test_script_writes_side_by_side_png(tmp_path, example):
    output = tmp_path / 'stages.png'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, 'image_transformation.py'), '--output',
         str(output), '--seed', '3'], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    _seed(3)
    stages = example.graph(['image', 'noisy_image', 'rotated_image'],
                           filename=example.SAMPLE_IMAGE)
    expected = np.asarray(images.side_by_side(stages, ['original', 'noisy', 'rotated']))
    with Image.open(output) as picture:
        assert picture.format == 'PNG' and picture.mode == 'RGB'
        assert picture.size == (3 * 256 + 2 * 8, 256 + images.CAPTION_HEIGHT)
        np.testing.assert_array_equal(np.asarray(picture), expected)


def test_missing_sample_image_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(pythonflow.data, '__file__', str(tmp_path / '__init__.py'))
    with pytest.raises(FileNotFoundError, match='installed without its data files'):
        pythonflow.data.sample_image_path()


def test_sample_images_are_reproducible_and_bundled():
    generated = np.asarray(_load('make_sample_image').make_sample_image())
    for path in (os.path.join(ROOT, 'docs', 'sample.png'), pythonflow.data.sample_image_path()):
        with Image.open(path) as image:
            assert image.size == (256, 256) and image.mode == 'RGB'
            np.testing.assert_array_equal(np.asarray(image), generated)
