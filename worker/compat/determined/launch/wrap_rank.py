"""``python3 -m determined.launch.wrap_rank``: :mod:`rung.launch.wrap_rank`."""

import sys

from rung.launch.wrap_rank import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
