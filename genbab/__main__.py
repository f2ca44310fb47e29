"""``python -m genbab ARGS``: the ``genbab`` command line (``genbab.cli.main``)."""
import sys

from genbab.cli import main

if __name__ == "__main__":
    sys.exit(main())
