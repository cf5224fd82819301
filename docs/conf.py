"""Sphinx configuration for the pythonflow documentation."""
import os
import sys

# Document the package in this tree, installed or not.
sys.path.insert(0, os.path.abspath(".."))

project = "pythonflow"
author = "the pythonflow authors"
copyright = "the pythonflow authors"  # noqa: A001 - the name Sphinx reads

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode",
              "matplotlib.sphinxext.plot_directive"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}  # members are listed where wanted
# The optional extras need not be installed to build the documentation, except the demo's:
# the guide's pictures run the image graph for real (the docs extra includes the demo extra).
autodoc_mock_imports = ["ipyparallel", "msgpack"]
# One PNG per plot, no links to other formats or to the source (it is shown inline).
plot_formats = [("png", 100)]
plot_html_show_formats = False
plot_html_show_source_link = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
