"""Rung\x27s searcher: pure search core, and (later) the async service."""
