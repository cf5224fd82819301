"""The documentation builds with Sphinx, warnings counting as errors."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install 'pythonflow[docs]')")

pytestmark = pytest.mark.timeout(150)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_docs_build(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS,
         str(tmp_path / "html")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "graph", "guide", "protocol", "performance", "api"):
        assert (tmp_path / "html" / f"{page}.html").is_file()
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    assert "LocalCluster" in api and "process_requests" in api
    protocol = (tmp_path / "html" / "protocol.html").read_text(encoding="utf-8")
    assert "HMAC-SHA256" in protocol  # the module docstring, included rather than copied
