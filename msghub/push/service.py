"""Subscriptions on the plain HTTP port: match, CORS, authentication, then a subscriber.

The HTTP port hands a connection here when a GET (or a CORS preflight)
names a subscription path; from then on the connection belongs to one
``Subscriber`` and to the subscription's source.  Every refusal is an HTTP
answer on that connection, then a close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Protocol
from urllib.parse import parse_qs, unquote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from msghub.auth import Authenticator, AuthStatus
from msghub.compact.state import State
from msghub.config_subscriptions import SubscriptionConfig
from msghub.ingress.http import render_response
from msghub.message import parse_id
from msghub.push.subscriber import PollSubscriber, StreamSubscriber, Subscriber
from msghub.push.tap import Tap
from msghub.router import WWW_AUTHENTICATE, compile_template

if TYPE_CHECKING:
    from msghub.ingress.http import HttpIngress

log = Logger()

_PREFLIGHT_HEADERS = (
    (b"Access-Control-Allow-Methods", b"GET, OPTIONS"),
    (b"Access-Control-Allow-Headers", b"Authorization, Last-Event-ID, Accept, Cache-Control"),
    (b"Access-Control-Max-Age", b"600"),
)


class Subscription:
    """One configured subscription: its compiled path, its source and its counters."""

    def __init__(self, config: SubscriptionConfig, source: Source) -> None:
        self.config = config
        self.name = config.name
        self.pattern = compile_template(config.match)
        self.source = source
        self.users = None if config.users is None else frozenset(config.users)
        self.origins = frozenset(o.encode() for o in config.cors_origins)
        self.open: set[Subscriber] = set()
        self.opened = 0
        self.gaps = 0

    def cors(self, origin: bytes | None) -> list[tuple[bytes, bytes]] | None:
        """CORS response headers for ``origin``; None when that origin is not allowed."""
        if origin is None:
            return []
        if b"*" in self.origins:
            return [(b"Access-Control-Allow-Origin", b"*")]
        if origin.lower() in self.origins:
            return [(b"Access-Control-Allow-Origin", origin), (b"Vary", b"Origin")]
        return None


class Source(Protocol):
    """Where a subscription's events come from: a route's Tap, or an AMQP source."""

    def subscribe(self, subscriber: Subscriber, captures: Mapping[str, str], last_id: str | None) -> None: ...


class ConnectionOwner(Protocol):
    """What owns an HTTP connection once it is handed to a subscription: a subscriber, or a stand-in."""

    def close(self) -> None: ...

    def connection_lost(self) -> None: ...


class _Pending:
    """Stands in for the subscriber while a password is checked off the reactor thread."""

    def __init__(self) -> None:
        self.cancelled = False

    def close(self) -> None:
        self.cancelled = True

    connection_lost = close


def last_event_id_problem(text: str) -> str | None:
    """A tap's ids are the hub's message ids (``BOOT-SEQ`` in hex)."""
    try:
        parse_id(text)
    except ValueError:
        return "Last-Event-ID is not a message id"
    return None


class PushService:
    """Every subscription of the hub, and the taps their routes feed."""

    def __init__(
        self,
        configs: tuple[SubscriptionConfig, ...],
        authenticator: Authenticator,
        verify_later: Callable[[bytes, str], Deferred],
        reactor: IReactorTime,
        amqp_source: Callable[[SubscriptionConfig], Source] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.verify_later = verify_later
        self.reactor = reactor
        self.taps: dict[str, list[Tap]] = {}
        self.subscriptions: list[Subscription] = []
        for config in configs:
            source: Source
            if config.route is not None:
                tap = source = Tap(config, config.route)
                self.taps.setdefault(config.route, []).append(tap)
            else:
                assert amqp_source is not None  # the hub passes one whenever a subscription has an amqp source
                source = amqp_source(config)
            self.subscriptions.append(Subscription(config, source))

    def reload(self, configs: tuple[SubscriptionConfig, ...]) -> list[str]:
        """Apply a reloaded ``[[subscriptions]]``; return what needs a restart.

        An unchanged subscription keeps its open subscribers and its tap's
        history.  A new or changed route tap starts now; a changed one's open
        subscribers are closed (they reconnect, with Last-Event-ID, to the new
        one), as are a removed one's.  A new or changed AMQP source needs a
        restart: the running one, if any, is kept.
        """
        notes = []
        running = {sub.config: sub for sub in self.subscriptions}
        by_name = {sub.name: sub for sub in self.subscriptions}
        subscriptions: list[Subscription] = []
        for config in configs:
            sub = running.pop(config, None)
            if sub is not None:
                pass
            elif config.route is not None:
                sub = Subscription(config, Tap(config, config.route))
                log.info("subscription {name}: started by the reload", name=config.name)
            else:
                notes.append(f"subscriptions: {config.name}: a new or changed AMQP source needs a restart")
                sub = running.pop(by_name[config.name].config, None) if config.name in by_name else None
            if sub is not None:
                subscriptions.append(sub)
        for sub in running.values():
            log.info("subscription {name}: ended by the reload; {n} subscribers closed", name=sub.name,
                      n=len(sub.open))
            for subscriber in list(sub.open):
                subscriber.close()
        self.subscriptions = subscriptions
        self.taps = {}
        for sub in subscriptions:
            if isinstance(sub.source, Tap):
                self.taps.setdefault(sub.config.route or "", []).append(sub.source)
        return notes

    def match(self, target: bytes) -> tuple[Subscription, dict[str, str]] | None:
        path = target.split(b"?", 1)[0]
        for sub in self.subscriptions:
            m = sub.pattern.fullmatch(path)
            if m is not None:
                return sub, {k: unquote(v.decode("latin-1")) for k, v in m.groupdict().items()}
        return None

    # -- one request ----------------------------------------------------------------

    def open(self, protocol: HttpIngress, sub: Subscription, captures: Mapping[str, str], method: bytes, target: bytes,
             state: State) -> ConnectionOwner | None:
        """Answer the request on ``protocol``'s connection; returns what now owns it."""
        transport = protocol.transport
        cors = sub.cors(state.header(b"origin"))

        def refuse(status: int, reason: str, headers=()) -> None:
            transport.write(render_response(status, reason, [*(cors or ()), *headers], close=True))
            transport.loseConnection()

        if cors is None:
            refuse(403, "origin not allowed")
            return None
        if method == b"OPTIONS":
            lines = [b"HTTP/1.1 204 No Content", *(b"%s: %s" % h for h in (*cors, *_PREFLIGHT_HEADERS))]
            transport.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
            transport.loseConnection()
            return None
        if method != b"GET":
            refuse(405, "method not allowed", [(b"Allow", b"GET, OPTIONS")])
            return None
        query = parse_qs(target.partition(b"?")[2].decode("latin-1"), max_num_fields=16)
        poll = query.get("poll", [""])[-1] in ("1", "true")
        accept = state.header(b"accept") or b""
        if not poll and b"text/event-stream" not in accept:
            refuse(406, "send Accept: text/event-stream, or use ?poll=1")
            return None
        header_id = state.header(b"last-event-id")
        last_id = header_id.decode("latin-1").strip() if header_id else query.get("last_id", [None])[-1]
        if last_id is not None:
            check = getattr(sub.source, "last_id_problem", last_event_id_problem)
            problem = check(last_id)
            if problem:
                refuse(400, problem)
                return None
        header = state.header(b"authorization")
        if header is None and "token" in query:
            # EventSource cannot send headers; the token in the URL is the trade-off (docs/push.md).
            header = b"Bearer " + query["token"][-1].encode("latin-1")
        timeout = None
        if poll and "timeout" in query:
            try:
                timeout = min(float(query["timeout"][-1]), sub.config.poll_timeout)
            except ValueError:
                refuse(400, "timeout must be a number of seconds")
                return None

        def start():
            auth = self.authenticator.authenticate(header)
            if auth.status is AuthStatus.BAD_CREDENTIALS:
                return refuse(401, "bad credentials", [WWW_AUTHENTICATE])
            if sub.users is not None:
                if auth.user is None:
                    return refuse(401, "credentials required", [WWW_AUTHENTICATE])
                if auth.user not in sub.users:
                    return refuse(403, f"user {auth.user} may not subscribe here")
            kind = PollSubscriber if poll else StreamSubscriber
            extra = {"timeout": timeout} if poll else {}
            subscriber = kind(sub.config, transport, self.reactor, cors, target.decode("latin-1"), **extra)
            self._track(sub, subscriber)
            sub.source.subscribe(subscriber, captures, last_id)
            return subscriber

        if header is None or not self.authenticator.needs_hashing(header):
            return start()
        pending = _Pending()

        def checked(refusal):
            if pending.cancelled:
                return
            if refusal is not None:  # over a budget, or the check failed: nothing was cached
                status, reason, headers = refusal
                return refuse(status, reason, list(headers))
            protocol.subscriber = start()

        peer = getattr(transport.getPeer(), "host", "?")
        self.verify_later(header, peer).addCallback(checked).addErrback(self._auth_failed)
        return pending

    @staticmethod
    def _auth_failed(failure) -> None:
        log.failure("subscription auth", failure)

    def _track(self, sub: Subscription, subscriber: Subscriber) -> None:
        sub.open.add(subscriber)
        sub.opened += 1

        def done(subscriber: Subscriber) -> None:
            sub.open.discard(subscriber)
            sub.gaps += getattr(subscriber, "gaps", 0)

        subscriber.on_done = done

    def close_all(self) -> None:
        """The hub is stopping: end every subscriber."""
        for sub in self.subscriptions:
            for subscriber in list(sub.open):
                subscriber.close()
