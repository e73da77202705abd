"""MathJax for the offline documentation: one file, fetched once, verified, kept in ``docs/_vendor/mathjax``.

The pages render their math in the reader's browser with MathJax's ``tex-svg-full.js`` copied into the site's
``_static`` folder, so the documentation needs no network when read. Why this file and this way:

* it is upstream MathJax itself (the npm registry's ``mathjax`` package, pinned and checked by SHA-256), not a
  repackaging; ``npm pack`` fetches the tarball without installing anything, and Node's npm is on the project's
  machines (the npm registry is one of the registries they reach);
* ``tex-svg-full`` is one self-contained file: SVG output needs no web fonts, and the "full" build holds every
  TeX extension, so nothing is loaded later (``tex-chtml`` would fetch fonts, ``tex-svg`` autoloads extensions);
* a Sphinx-side prerendering (KaTeX, imgmath) would need Node's KaTeX or a LaTeX installation at every build.

``python docs/_tools/vendor_mathjax.py`` fetches it by hand; ``docs/conf.py`` calls ``ensure()`` on every build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MATHJAX_VERSION = "3.2.2"
MATHJAX_FILE = "tex-svg-full.js"
MATHJAX_SHA256 = "a4354ff94fd868aea0cc6eaaa79a57fda0588646fc46ee3700a349ee0a11cbe6"
VENDOR_DIR = Path(__file__).resolve().parents[1] / "_vendor" / "mathjax"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure(folder: Path = VENDOR_DIR) -> Path:
    """The path of the verified MathJax file, fetching it with ``npm pack`` if it is missing or altered."""
    target = folder / MATHJAX_FILE
    if target.is_file() and _sha256(target.read_bytes()) == MATHJAX_SHA256:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"the offline docs need MathJax {MATHJAX_VERSION} ({MATHJAX_FILE}), fetched once from the "
                           f"npm registry with npm, which is not installed (Debian: apt-get install -y npm); or put "
                           f"the file from the mathjax@{MATHJAX_VERSION} package at {target}")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--silent", "--pack-destination", tmp],
                                capture_output=True, text=True, timeout=600, check=False)
        tarballs = list(Path(tmp).glob("mathjax-*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"npm pack mathjax@{MATHJAX_VERSION} failed: {result.stderr.strip()[-500:]}")
        with tarfile.open(tarballs[0]) as archive:
            member = archive.extractfile(f"package/es5/{MATHJAX_FILE}")
            data = member.read() if member is not None else b""
    if _sha256(data) != MATHJAX_SHA256:
        raise RuntimeError(f"mathjax@{MATHJAX_VERSION} {MATHJAX_FILE} has SHA-256 {_sha256(data)}, expected "
                           f"{MATHJAX_SHA256}: not using it")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{MATHJAX_FILE}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, target)
    return target


if __name__ == "__main__":
    try:
        print(ensure())
    except RuntimeError as err:
        print(f"vendor_mathjax: {err}", file=sys.stderr)
        sys.exit(1)
