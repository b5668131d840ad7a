"""``python -m robustlib reproduce|build|book`` — see :mod:`robustlib.reproduce`."""
import sys

from .reproduce import main

if __name__ == "__main__":
    sys.exit(main())
