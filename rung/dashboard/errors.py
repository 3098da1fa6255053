"""The dashboard's one exception root."""

from __future__ import annotations

__all__ = ["DashboardError"]


class DashboardError(Exception):
    """The dashboard cannot show or do what was asked; the message says why and what to do."""
