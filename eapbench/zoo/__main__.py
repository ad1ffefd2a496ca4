"""``python -m eapbench.zoo``: rebuild the mini zoo (see :mod:`eapbench.zoo.build`)."""

import sys

from .build import main

if __name__ == "__main__":
    sys.exit(main())
