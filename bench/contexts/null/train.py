"""A null trial: one operation, no work; reports a metric and exits."""

import rung as det

with det.core.init() as core_context:
    for op in core_context.searcher.operations():
        op.report_completed(0.0)
