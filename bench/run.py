"""One-command benchmark entry: ``python bench/run.py [args]`` is ``optzoo bench [args]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optzoo.bench import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["modern"]:  # Adafactor, CAME, Muon, SOAP against their reference packages
        from optzoo.bench.modern_transformer import main as modern_main

        sys.exit(modern_main(sys.argv[2:]))
    if sys.argv[1:2] == ["publish"]:  # the README's and docs/benchmarks.md's results, from one run
        from optzoo.bench.publish import main as publish_main

        sys.exit(publish_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
