"""Sphinx configuration for optzoo's documentation (built by ``scripts/docs.sh``; CI builds it with ``-W``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))
sys.path.insert(0, os.path.abspath("_tools"))

import optzoo

project = "optzoo"
author = "the optzoo authors"
copyright = "the optzoo authors, Apache-2.0"
release = optzoo.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "optzoo_docs",
]

# Markdown pages (MyST) next to reStructuredText; ``$...$`` and ``$$...$$`` math in Markdown
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
root_doc = "index"
exclude_patterns = ["_build", "_tools", "_ext", "_vendor", "Thumbs.db", ".DS_Store"]

# Docstrings are Google style ("Args:", "Example:", "References:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_default_options = {"show-inheritance": True}
# torch's own objects are not documented here; do not try to cross-reference them
nitpicky = False

html_theme = "alabaster"
html_static_path = ["_static", "_vendor"]
html_css_files = ["optzoo.css"]  # code blocks wrap, wide tables scroll
html_title = f"optzoo {release}"
html_theme_options = {"description": "MXNet's optimizers, Trainer and schedulers on PyTorch", "fixed_sidebar": True}
# Offline math: MathJax from the site itself (docs/_tools/vendor_mathjax.py says why this file and how it is
# fetched: once, with npm, checked by SHA-256, into docs/_vendor, which the build copies into _static).
import vendor_mathjax  # noqa: E402

vendor_mathjax.ensure()
mathjax_path = f"mathjax/{vendor_mathjax.MATHJAX_FILE}"
