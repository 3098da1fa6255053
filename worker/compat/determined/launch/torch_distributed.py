"""``python3 -m determined.launch.torch_distributed``: :mod:`rung.launch.torch_distributed`."""

import sys

from rung.launch.torch_distributed import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
