"""Benchmarks that print figures. Run ``python -m bench [--quick] [--only NAME]``."""
