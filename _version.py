"""The single source of the pulsarfunc version (read by pyproject and the builder)."""

__version__ = "0.1.0"
