"""Opens a page in Debian's headless chromium (``scripts/test.sh`` installs it with apt) and reports what a reader
would see: used by tests/test_cli.py (the compare report) and tests/test_docs.py (the documentation site).

A copy of the page gets a probe script that, once the page has loaded (and MathJax, if the page has it, has
typeset), writes a JSON summary into the DOM, which ``chromium --dump-dom`` prints: the viewport width, how far
the page is wider than it (horizontal overflow), the images and which failed to load, every resource the page
fetched, script errors and how many equations MathJax rendered.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = """<script>
window.__errors = [];
window.__failed = [];
window.addEventListener("error", function (e) {
  if (e instanceof ErrorEvent) { window.__errors.push(String(e.message)); }
  else if (e.target && e.target.tagName) { window.__failed.push(e.target.id || e.target.src || e.target.href); }
}, true);
function __optzooReport() {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var root = document.documentElement;
  var widest = Math.max(root.scrollWidth, document.body.scrollWidth);
  var out = {width: window.innerWidth, overflow: widest - window.innerWidth,
             images: imgs.length, broken: broken.map(function (i) { return i.id || i.alt || i.src.slice(0, 80); }),
             sizes: imgs.map(function (i) { return [i.naturalWidth, i.naturalHeight]; }),
             resources: performance.getEntriesByType("resource").map(function (e) { return e.name; }),
             tables: document.querySelectorAll("table").length, errors: window.__errors, failed: window.__failed,
             math: document.querySelectorAll("mjx-container").length,
             math_errors: document.querySelectorAll("mjx-merror, [data-mjx-error]").length};
  out.wide = Array.from(document.body.querySelectorAll("*")).filter(function (e) {
    return e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest(".scroll, table.docutils, div.math");
  }).slice(-6).map(function (e) { return e.tagName + "." + e.className + " " + (e.textContent || "").slice(0, 40); });
  if (window.parent !== window) { window.parent.postMessage(JSON.stringify(out), "*"); return; }
  var pre = document.createElement("pre"); pre.id = "optzoo-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}
window.addEventListener("load", function () {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(__optzooReport, __optzooReport);
  } else { __optzooReport(); }
});
</script>"""


def chromium() -> str:
    """The browser's path, or a pytest skip saying how to install it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; scripts/test.sh does it)")
    return browser


#: the page under test in a frame of the width asked for (a window can be no narrower than 500 px, a frame can)
FRAME = """<!DOCTYPE html><html><head><meta charset="utf-8"/><style>body{margin:0}iframe{border:0}</style></head>
<body><iframe src="PAGE" style="width:WIDTHpx;height:900px"></iframe><script>
window.addEventListener("message", function (e) {
  var pre = document.createElement("pre"); pre.id = "optzoo-check"; pre.textContent = e.data;
  document.body.appendChild(pre);
});
</script></body></html>"""


def probe(page: Path, width: int, extra: str = "") -> dict:
    """Opens a probed copy of ``page`` (beside it, so relative links resolve) in a frame ``width`` pixels wide;
    ``extra`` is HTML inserted at the end of its body. Returns the probe's summary."""
    browser = chromium()
    copy = page.with_name(f"_probe_{width}_{page.name}")
    frame = page.with_name(f"_frame_{width}_{page.name}")
    text = page.read_text(encoding="utf-8")
    copy.write_text(text.replace("</head>", PROBE + "</head>", 1).replace("</body>", extra + "</body>", 1),
                    encoding="utf-8")
    frame.write_text(FRAME.replace("PAGE", copy.name).replace("WIDTH", str(width)), encoding="utf-8")
    try:
        result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                 f"--window-size={width + 20},950", "--virtual-time-budget=15000", "--dump-dom",
                                 frame.as_uri()], check=False, capture_output=True, text=True, timeout=180)
    finally:
        copy.unlink()
        frame.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    marker = '<pre id="optzoo-check">'
    assert marker in dom, f"the probe did not report (page did not finish loading?): {result.stderr[-1000:]}"
    start = dom.index(marker) + len(marker)
    return json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))
