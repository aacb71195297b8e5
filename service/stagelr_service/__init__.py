"""stagelr server: REST API, AutoLRS tuner, optimizer, forecaster and SQL store."""

__version__ = "0.1.0"
