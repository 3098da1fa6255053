"""Rung's searcher: the pure search core, the experiment hosts, the event log and the
async service."""
