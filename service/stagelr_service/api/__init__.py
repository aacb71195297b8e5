"""The HTTP layer: routes, the error mapping, the app factory. It translates only."""

from .app import create_app

__all__ = ["create_app"]
