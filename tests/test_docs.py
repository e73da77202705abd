"""The documentation site builds with warnings as errors and covers every registered optimizer."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from optzoo.optimizer import Optimizer

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("myst_parser", reason="the docs extra is not installed (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    doctrees = out.parent / "doctrees"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees),
         str(DOCS), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stderr[-6000:]}\n{result.stdout[-2000:]}"
    return out


def test_build_has_no_warnings(site):
    assert (site / "index.html").is_file()


def test_every_registered_optimizer_has_a_section_in_the_guide(site):
    page = _parse(site / "optimizers.html")
    # docutils writes the label opt-schedulefree_adamw as the id opt-schedulefree-adamw
    missing = [name for name in sorted(Optimizer.opt_registry) if f"opt-{name.replace('_', '-')}" not in page.ids]
    assert not missing, f"optimizers without a section (anchor opt-<name>) in the guide: {missing}"
    # each section carries the class docstring (its update rule) and the trajectory picture
    html = (site / "optimizers.html").read_text(encoding="utf-8")
    pictures = {Path(src).name for src in page.images}
    for name, klass in Optimizer.opt_registry.items():
        assert f"{name}.png" in pictures, f"no trajectory picture for {name}"
        assert f"{klass.__module__}.{klass.__qualname__}" in html or klass.__qualname__ in html, name
    assert html.count('class="math') >= len(Optimizer.opt_registry)


def test_every_referenced_image_exists(site):
    pages = sorted(site.rglob("*.html"))
    checked = 0
    for page in pages:
        for src in _parse(page).images:
            if re.match(r"^[a-z]+:", src):  # data: or remote URLs: none are expected
                pytest.fail(f"{page.name} references a non-local image {src[:80]}")
            target = (page.parent / src.split("#")[0].split("?")[0]).resolve()
            assert target.is_file(), f"{page.name} references a missing image {src}"
            checked += 1
    assert checked >= len(Optimizer.opt_registry)


def test_committed_pictures_are_small():
    pictures = sorted((DOCS / "_static" / "trajectories").glob("*.png"))
    assert {p.stem for p in pictures} >= set(Optimizer.opt_registry)
    total = sum(p.stat().st_size for p in pictures)
    assert total < 2 * 1024 * 1024, f"trajectory pictures take {total} bytes; keep them under 2 MB"


def test_deviations_page_is_included(site):
    page = site / "deviations.html"
    assert page.is_file()
    first_heading = next(line for line in (DOCS / "deviations.md").read_text(encoding="utf-8").splitlines()
                         if line.startswith("# "))
    title = first_heading[2:].strip().replace("`", "")
    assert title in page.read_text(encoding="utf-8")
    assert "deviations.html" in {link.split("#")[0] for link in _parse(site / "index.html").links}


def test_other_pages_exist(site):
    for name in ("migration", "torch_optim", "benchmarks", "api"):
        assert (site / f"{name}.html").is_file(), name
    api = _parse(site / "api.html").ids
    for target in ("optzoo.trainer.Trainer", "optzoo.torch_optimizer.TorchOptimizer",
                   "optzoo.optimizer.updater.Updater", "optzoo.lr_scheduler.CosineScheduler",
                   "optzoo.serialization.save", "optzoo.checkpoint.trainer_state"):
        assert target in api, target
    for name, klass in Optimizer.opt_registry.items():
        assert f"{klass.__module__}.{klass.__qualname__}" in api, name


def _pages(site: Path) -> dict[Path, _Collector]:
    return {page.resolve(): _parse(page) for page in sorted(site.rglob("*.html"))}


def test_no_broken_internal_links_or_anchors(site):
    """Every relative link lands on a page of the site and, with a #fragment, on an id of that page (viewcode's
    "[docs]" links included)."""
    from urllib.parse import unquote

    pages = _pages(site)
    broken, checked = [], 0
    for page, parsed in pages.items():
        for href in parsed.links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", href):  # mailto:, https:, ...: not part of the site
                continue
            path, _, fragment = href.partition("#")
            target = (page.parent / unquote(path)).resolve() if path else page
            checked += 1
            if (target.suffix == ".html" and target not in pages) or not target.exists():
                broken.append(f"{page.relative_to(site.resolve())}: {href} (no such file)")
            elif fragment and target in pages and unquote(fragment) not in pages[target].ids:
                broken.append(f"{page.relative_to(site.resolve())}: {href} (no such anchor)")
    assert checked > 500
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:30])


def test_site_needs_no_network(site):
    """No page loads anything from another host; the math renders with the site's own copy of MathJax."""
    remote = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        for url in re.findall(r'<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)="([^"]+)"', text):
            if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url):
                remote.append(f"{page.name}: {url}")
    assert not remote, remote[:10]
    optimizers = (site / "optimizers.html").read_text(encoding="utf-8")
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', optimizers, flags=re.I)
    assert [s.split("?")[0] for s in scripts] == ["_static/mathjax/tex-svg-full.js"], scripts
    assert (site / "_static" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000


@pytest.mark.parametrize("width", [375, 1280])
def test_pages_fit_the_screen_in_a_real_browser(site, width):
    """Opened offline in headless chromium at a phone's and a laptop's width: no page is wider than the screen
    (code wraps, tables and equations scroll in their own box), images load, the math is typeset, no errors."""
    from browser import probe  # tests/browser.py

    for name in ("optimizers.html", "api.html", "torch_optim.html", "genindex.html", "migration.html"):
        check = probe(site / name, width)
        assert check["width"] == width, check
        assert check["overflow"] <= 0, (name, check["overflow"], check["wide"])
        assert check["broken"] == [] and check["failed"] == [] and check["errors"] == [], (name, check)
        assert check["math_errors"] == 0, name
        if name in ("optimizers.html", "api.html", "torch_optim.html"):
            assert check["math"] >= 20, (name, check["math"])  # typeset by the bundled MathJax, offline
