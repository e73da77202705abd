"""Sphinx helpers for optzoo's guide.

``.. optzoo-optimizer:: NAME`` documents one registered optimizer: its hyperparameters with their defaults
(read from the code, as ``optzoo list`` prints them), its class docstring with the update rule (autodoc,
not indexed: the API reference holds the indexed entry) and its trajectory picture from
``_static/trajectories/NAME.png``. After reading all pages, a registered optimizer without such a directive,
or a missing picture, is reported as a warning, so the ``-W`` build fails when an optimizer is added
without documentation.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_COMMON_NOTE = "plus the arguments every optimizer takes (see {ref}`common-arguments`)"


def _describe() -> dict:
    from optzoo.cli.list_cmd import describe_optimizers

    return {row["name"]: row for row in describe_optimizers()["optimizers"]}


class OptimizerDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        name = self.arguments[0]
        rows = _describe()
        if name not in rows:
            raise self.error(f"optzoo-optimizer: {name!r} is not a registered optimizer; known: {sorted(rows)}")
        row = rows[name]
        picture = Path(self.env.srcdir) / "_static" / "trajectories" / f"{name}.png"
        if not picture.is_file():
            logger.warning("optzoo-optimizer %s: no trajectory picture %s (scripts/docs.sh --refresh-images)",
                           name, picture, location=self.get_location())
        self.env.optzoo_documented = getattr(self.env, "optzoo_documented", set()) | {name}
        # the guide is MyST Markdown, so the generated content is MyST too
        fence = "````"
        lines = [
            f"Create it with `optzoo.optimizer.create({name!r}, ...)` or "
            f"{{class}}`~{row['class']}`; its own arguments, {_COMMON_NOTE}:",
            "",
            f"{fence}{{list-table}} Hyperparameters and defaults",
            ":header-rows: 1",
            "",
            "* - argument",
            "  - default",
        ]
        for arg, value in row["hyperparameters"].items():
            lines += [f"* - `{arg}`", f"  - `{value!r}`"]
        lines += [
            fence,
            "",
            f"{fence}{{eval-rst}}",
            f".. autoclass:: {row['class']}",
            "   :no-index:",
            "   :no-members:",
            "   :no-show-inheritance:",
            fence,
            "",
            f"{fence}{{figure}} /_static/trajectories/{name}.png",
            f":alt: {name} on the Rosenbrock, Beale and saddle functions",
            ":width: 100%",
            "",
            f"`{name}` on the Rosenbrock (top), Beale (middle) and saddle (bottom) functions from the same "
            "start (black dot), 300 steps at the best learning rate of a half-decade grid (`lr*`); right: "
            "`f - f_min` against the step. Drawn by `optzoo trajectories`.",
            fence,
            "",
        ]
        container = nodes.container(classes=["optzoo-optimizer"])
        self.state.nested_parse(StringList(lines, source=f"<optzoo-optimizer {name}>"), self.content_offset,
                                container)
        return [container]


def _merge(app, env, docnames, other):
    env.optzoo_documented = getattr(env, "optzoo_documented", set()) | getattr(other, "optzoo_documented", set())


def _purge(app, env, docname):
    pass  # the set only grows; a full build (as CI and the tests run) starts from an empty one


def _check(app, env):
    from optzoo.optimizer import Optimizer

    missing = sorted(set(Optimizer.opt_registry) - getattr(env, "optzoo_documented", set()))
    if missing:
        logger.warning("registered optimizers without an optzoo-optimizer section in the guide: %s",
                       ", ".join(missing))


def _unlink_unindexed(app, doctree) -> None:
    """viewcode's "[docs]" link on a source page leads back to the page documenting the object; an unindexed
    copy (the guide's ``:no-index:`` class docstrings) has no anchor to land on, so it must not claim the link:
    the indexed entry in the API reference keeps it."""
    from sphinx import addnodes

    for desc in doctree.findall(addnodes.desc):
        if desc.get("no-index") or desc.get("noindex"):
            for signature in desc.findall(addnodes.desc_signature):
                signature["module"] = None


def setup(app):
    app.add_directive("optzoo-optimizer", OptimizerDirective)
    app.connect("doctree-read", _unlink_unindexed, priority=400)  # before viewcode's handler (500)
    app.connect("env-merge-info", _merge)
    app.connect("env-purge-doc", _purge)
    app.connect("env-check-consistency", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
