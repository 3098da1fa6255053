"""A module of ``kept_cwd.py``'s own folder, imported by it."""

NAME = "kept helper"
