# cython: language_level=3
"""Placeholder for the C engine (filled by the C-engine work). Not selectable yet."""
ENGINE_READY = False
ENGINE_NAME = "c"
