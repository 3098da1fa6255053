"""Never calls the Core API: it just sleeps (a hung data loader, say)."""

import time

from _train import say  # type: ignore[import-not-found]  # (its own folder)

say("waiting for nothing")
time.sleep(3600)
