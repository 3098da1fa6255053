"""``python -m rung`` is the ``rung`` command."""

import sys

from rung.cli import main

sys.exit(main())
