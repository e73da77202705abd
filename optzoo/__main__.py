"""``python -m optzoo``: the optzoo command line (see :mod:`optzoo.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
