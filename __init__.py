"""pulsarfunc: Python functions for Apache Pulsar."""

from pulsarfunc._version import __version__

__all__ = ["__version__"]
