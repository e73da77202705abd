"""``python -m optzoo.cli``: the same as ``python -m optzoo``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
