"""stagelr: the client of the stagelr learning-rate tuning service.

A training job asks the service, segment by segment, which learning rate to train with
and reports its loss back::

    import stagelr

    with stagelr.Tuner("http://127.0.0.1:8321", study="digits-1",
                       lr_min=1e-3, lr_max=1.0, total_steps=2000) as tuner:
        for segment in tuner:
            ...

This package needs only httpx and pydantic. The PyTorch helper (checkpoints, LR apply) is
the separate module :mod:`stagelr.torch`; the wire models are in :mod:`stagelr.models`.
"""

from ._client import Client
from ._exceptions import (
    APIError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    StagelrError,
    TransportError,
    ValidationError,
)
from ._segment import Segment
from ._transport import RetryTransport
from ._tuner import Tuner
from ._version import __version__

__all__ = [
    "APIError",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RetryTransport",
    "Segment",
    "ServerError",
    "StagelrError",
    "TransportError",
    "Tuner",
    "ValidationError",
    "__version__",
]

# Public names report this package, not the private module they live in (as httpx does).
for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "stagelr"
del _name
