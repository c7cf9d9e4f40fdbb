"""``python -m chatd.soak``: the soak test, kept under this name for the
command line (the code is :mod:`chatd.tools.soak`)."""

import sys

from chatd.tools.soak import main

if __name__ == "__main__":
    sys.exit(main())
