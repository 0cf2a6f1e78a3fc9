"""``python -m suite``: the command line (``suite.cli.main``)."""

import sys

from suite.cli import main

# The guard matters: decoding workers re-import the main module under another name.
if __name__ == "__main__":
    sys.exit(main())
