"""stagelr server: REST API, AutoLRS tuner, optimizer, forecaster and SQL store."""

from stagelr._version import __version__

__all__ = ["__version__"]
