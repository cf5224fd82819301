"""Sphinx configuration for the pythonflow documentation."""
import os
import sys

# Document the package in this tree, installed or not.
sys.path.insert(0, os.path.abspath(".."))

project = "pythonflow"
author = "the pythonflow authors"
copyright = "the pythonflow authors"  # noqa: A001 - the name Sphinx reads

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}  # members are listed where wanted
# The optional extras need not be installed to build the documentation.
autodoc_mock_imports = ["ipyparallel", "scipy", "PIL", "tqdm", "msgpack"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
