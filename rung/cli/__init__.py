"""The ``rung`` command line."""

from rung.cli.main import main

__all__ = ["main"]
