"""The dashboard's charts, drawn on the server as SVG text by pure functions.

Each builder takes the plain data of `data` and gives a complete ``<svg>`` element that
scales to the width of its container; the same data always gives the same text. Every
piece of text in it (labels, names, reasons, links) is escaped.
"""

from rung.dashboard.charts.bars import bar_chart
from rung.dashboard.charts.data import (
    Axis,
    Bar,
    Branch,
    Curve,
    ParallelAxis,
    ParallelLine,
    RungColumn,
    Segment,
    StripPoint,
)
from rung.dashboard.charts.lineage import lineage_tree
from rung.dashboard.charts.lines import line_chart, sparkline
from rung.dashboard.charts.parallel import parallel_coordinates
from rung.dashboard.charts.strip import rung_view
from rung.dashboard.charts.timeline import worker_timeline

__all__ = [
    "Axis",
    "Bar",
    "Branch",
    "Curve",
    "ParallelAxis",
    "ParallelLine",
    "RungColumn",
    "Segment",
    "StripPoint",
    "bar_chart",
    "line_chart",
    "lineage_tree",
    "parallel_coordinates",
    "rung_view",
    "sparkline",
    "worker_timeline",
]
