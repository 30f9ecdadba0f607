"""The compact, stateful encoding of HTTP (``docs/compact-http.md``), sans-IO.

Nothing here imports Twisted, a clock or logging: bytes in, events out.
"""

from msghub.compact.decoder import Decoder
from msghub.compact.encoder import Encoder
from msghub.compact.errors import CompactError, StreamError, UsageError
from msghub.compact.http11 import Http11Reader, to_http11
from msghub.compact.replies import (
    MESSAGE_IDS_LINE,
    Ack,
    Error,
    Fatal,
    Ids,
    ReplyReader,
    ack_line,
    error_line,
    fatal_line,
    ids_line,
)
from msghub.compact.state import INITIAL_STATE, Limits, Rejected, Request, State, combine_fields

__all__ = [
    "Ack",
    "CompactError",
    "Decoder",
    "Encoder",
    "Error",
    "Fatal",
    "Http11Reader",
    "INITIAL_STATE",
    "Ids",
    "Limits",
    "MESSAGE_IDS_LINE",
    "Rejected",
    "ReplyReader",
    "Request",
    "State",
    "StreamError",
    "UsageError",
    "ack_line",
    "combine_fields",
    "error_line",
    "fatal_line",
    "ids_line",
    "to_http11",
]
