"""The documentation builds with Sphinx, warnings counting as errors."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install 'pythonflow[docs]')")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install "
                    "'pythonflow[docs]')")

pytestmark = pytest.mark.timeout(150)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_docs_build(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS,
         str(tmp_path / "html")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "graph", "pythonflow", "guide", "protocol", "performance", "api"):
        assert (tmp_path / "html" / f"{page}.html").is_file()
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    assert "LocalCluster" in api and "process_requests" in api
    protocol = (tmp_path / "html" / "protocol.html").read_text(encoding="utf-8")
    assert "HMAC-SHA256" in protocol  # the module docstring, included rather than copied
    check_guide_pictures(tmp_path / "html")


def check_guide_pictures(html):
    """The guide's plot ran the image graph: original, noisy and rotated sample image."""
    from matplotlib.image import imread

    guide = (html / "guide.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*class="plot-directive"[^>]*src="([^"]+)"', guide)
    assert len(sources) == 1, sources
    assert "build_graph" in guide and "plot-directive" in guide
    pixels = imread(html / sources[0])[..., :3]
    height, width, _ = pixels.shape
    assert width > 2.5 * height > 500
    # Three panels side by side, each an image of its own: the rotated one has black corners
    # where the original and the noisy one have none.
    panels = [pixels[:, i * width // 3:(i + 1) * width // 3] for i in range(3)]
    black = [(panel.max(axis=-1) < 0.05).mean() for panel in panels]
    assert black[0] < 0.03 and black[1] < 0.03 and black[2] > 0.08, black
    assert not np.allclose(panels[0], panels[1], atol=0.02)  # the noise shows
