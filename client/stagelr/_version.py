"""The client version (the distribution version in pyproject.toml)."""

__version__ = "0.1.0"
