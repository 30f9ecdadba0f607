"""A route's AMQP destination: how its messages become frames, and where they go while the broker cannot take them.

``AmqpSink`` is what the router hands batches to.  It knows its exchange,
routing-key template and broker-down policy, encodes messages (live or read
back from the spool alike) and spools or refuses batches the forwarder
cannot publish.  It does not know the forwarder: it is given the callables
it uses (``submit`` a batch, ``wake`` after a spool commit) and the spool.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from msghub.config_amqp import AmqpRoute
from msghub.forward import amqp_wire as wire
from msghub.forward.amqp_client import CHANNEL
from msghub.message import SEQ_BITS, SEQ_MASK, Message
from msghub.sink import ISink, SinkError

if TYPE_CHECKING:
    from msghub.forward.amqp_dispatch import Dispatcher

log = Logger()

_CACHE_MAX = 4096


def spool_name(route: str) -> str:
    """The spool name holding a route's messages while the broker is unavailable."""
    return f"amqp:{route}"


@implementer(ISink)
class AmqpSink:
    """A route's AMQP destination: exchange, routing-key template, broker-down policy."""

    def __init__(
        self, route_name: str, pattern: re.Pattern[bytes], amqp: AmqpRoute, policy: str, persistent: bool,
        submit: Callable[[AmqpSink, list[Message]], defer.Deferred], spool: Any, wake: Callable[[], None],
    ) -> None:
        self.name = f"amqp:{route_name}"
        self.route_name = route_name
        self.pattern = pattern
        self.exchange = amqp.exchange.encode()
        self.routing_key = amqp.routing_key
        self.fixed_key = None if "{" in amqp.routing_key else amqp.routing_key.encode()
        self.mandatory = amqp.mandatory
        self.persistent = persistent
        self.policy = policy
        self.spool_name = spool_name(route_name)
        self.spooling = False  # set from the spool's depth when the forwarder starts
        self.appends = 0  # spool appends not yet committed
        self.committed = 0  # spool appends committed, so a read can tell it missed one
        self.dispatcher: Dispatcher  # set by AmqpForwarder.sink, which builds it around this sink
        self._submit = submit
        self._spool = spool
        self._wake = wake
        self._methods: dict[bytes, bytes] = {}  # target path -> publish method frame
        self._statics: dict[tuple, wire.StaticProperties] = {}  # (headers, method, user) -> properties
        self._templates: dict[tuple, wire.Template] = {}  # (properties, target) -> frames but the message's own

    def deliver(self, messages: list[Message]) -> defer.Deferred:
        return self._submit(self, messages)

    # -- encoding -------------------------------------------------------------

    def method_frame(self, target: bytes, captures: Mapping[str, str]) -> bytes:
        frame = self._methods.get(target)
        if frame is None:
            if self.fixed_key is not None:
                key = self.fixed_key
            else:
                try:
                    text = self.routing_key.format(**captures)
                except KeyError:  # spooled by a msghub that kept no captures: match again
                    m = self.pattern.fullmatch(target.split(b"?", 1)[0])
                    # Decoded exactly as the router decodes the route's captures.
                    found = {k: unquote(v.decode("latin-1")) for k, v in (m.groupdict() if m else {}).items()}
                    text = self.routing_key.format_map(_Blank(found))
                key = text.encode("utf-8")[:255]
            frame = wire.publish_frame(CHANNEL, self.exchange, key, self.mandatory)
            if len(self._methods) >= _CACHE_MAX:
                self._methods.clear()
            self._methods[target] = frame
        return frame

    def encode(self, messages: list[Message], frame_max: int) -> bytes:
        """Frames for ``messages``, live or read back from the spool alike."""
        statics = self._statics
        templates = self._templates
        out: list[bytes] = []
        chunk = frame_max - wire.FRAME_OVERHEAD
        last_headers = last_method = last_user = static = None
        last_target = template = None
        for m in messages:
            headers, method, user, target = m.headers, m.method, m.user, m.target
            # Messages of one state share the headers tuple: an identity test
            # instead of hashing it per message.
            if headers is not last_headers or method is not last_method or user != last_user or static is None:
                key = (headers, method, user)
                static = statics.get(key)
                if static is None:
                    static = wire.StaticProperties(headers, method, self.route_name, user, self.persistent)
                    if len(statics) >= _CACHE_MAX:
                        statics.clear()
                        templates.clear()  # keyed by the statics
                    statics[key] = static
                last_headers, last_method, last_user = headers, method, user
                template = None
            if template is None or target != last_target:
                template = templates.get((static, target))
                if template is None:
                    template = wire.Template(CHANNEL, self.method_frame(target, m.captures), static, target)
                    if len(templates) >= _CACHE_MAX:
                        templates.clear()
                    templates[(static, target)] = template
                last_target = target
            i = m.id
            message_id = b"%x-%010x" % (i >> SEQ_BITS, i & SEQ_MASK)  # format_id, as bytes
            body = m.body
            if 0 < len(body) <= chunk:
                template.frames(message_id, int(m.received), body, out)
            else:
                out.append(template.method)
                out.append(wire.content_frames(CHANNEL, frame_max, static, target, message_id, int(m.received), body))
        return b"".join(out)

    # -- the broker-down path ------------------------------------------------------

    def divert(self, messages: list[Message]) -> defer.Deferred:
        """Spool ``messages`` (acknowledged on commit) or refuse them, per policy."""
        if self.policy == "reject":
            return defer.fail(SinkError(503, "broker unavailable"))
        if not self.spooling:
            self.spooling = True
            log.warn("amqp route {route}: spooling; acknowledged on the spool's commit until the broker takes "
                     "them again", route=self.route_name)
        self.appends += 1
        d = self._spool.append(self.spool_name, messages)

        def committed(result):
            self.appends -= 1
            self.committed += 1
            self._wake()
            return result

        return d.addBoth(committed)


class _Blank(dict):
    """Formats a missing capture as an empty string."""

    def __missing__(self, key: str) -> str:
        return ""
