"""The durable spool: accepted messages committed to SQLite as segments before they are acknowledged.

- ``schema``: the on-disk layout, the segment codec, migrations (no Twisted:
  ``msghub-spool`` imports only that);
- ``store``: the writer thread and group commit, and reads off the reactor thread;
- ``queries``: what those threads run against the database (reads, marks, dead rows);
- ``ids``: message id epochs;
- ``service``: the service that opens and closes it, and a route's sink.

The names below are loaded on first use, so that importing
``msghub.spool.schema`` does not import Twisted.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "Position": "queries",
    "Segment": "queries",
    "Spool": "store",
    "SpoolError": "store",
    "SpoolStats": "store",
    "SpoolService": "service",
    "SpoolSink": "service",
    "decode_headers": "schema",
    "encode_headers": "schema",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
