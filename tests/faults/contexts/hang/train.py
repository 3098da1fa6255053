"""A training script that hangs: it reports once, then blocks forever without a word."""

import threading

import rung as det

with det.core.init() as core_context:
    for op in core_context.searcher.operations():
        op.report_progress(1)
        threading.Event().wait()  # stuck: a deadlock, a dead NFS mount, a hung collective
