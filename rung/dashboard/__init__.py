"""``rung dashboard``: a web view of searches as they run.

Pages for the experiments, one experiment (best so far, learning curves, the rungs with
the searcher's reasons, parallel coordinates, importance, the worker timeline, the
trials) and one trial, rendered on the server and kept live by server-sent events. It
reads a running searcher through ``rung.Client`` (:class:`ClientSource`) or a state
directory of logs (:class:`DirSource`, read-only). docs/dashboard.md shows it.
"""

from rung.dashboard.errors import DashboardError
from rung.dashboard.model import ExperimentView
from rung.dashboard.server import Dashboard
from rung.dashboard.source import ClientSource, DirSource, Source

__all__ = ["ClientSource", "Dashboard", "DashboardError", "DirSource", "ExperimentView", "Source"]
