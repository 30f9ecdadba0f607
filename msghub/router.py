"""Route match, path captures, authentication and authorisation.

The ``Router`` is built from the configuration and replaced whole on a reload.  Its
answers are pure functions of (state, method, target), so each connection
keeps a ``DecisionCache`` keyed by the compact ``State`` it received, then by
method and target: the work is done once per register set, not once per
message.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence
from urllib.parse import unquote

from msghub.auth import Authenticator, AuthResult, AuthStatus
from msghub.compact.state import State

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="msghub", Basic realm="msghub"')


def compile_template(template: str) -> re.Pattern[bytes]:
    """``/quotes/{symbol}`` -> a bytes regex where ``{name}`` matches one path segment."""
    out = []
    pos = 0
    for m in _CAPTURE.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out).encode("ascii"))


class Route:
    """A configured route with its destination sink (its counters are in ``HubStats``)."""

    __slots__ = ("name", "pattern", "methods", "users", "sink")

    def __init__(
        self,
        name: str,
        template: str,
        methods: Iterable[bytes],
        users: Iterable[str] | None,
        sink: object,
    ) -> None:
        self.name = name
        self.pattern = compile_template(template)
        self.methods = frozenset(methods)
        self.users = None if users is None else frozenset(users)
        self.sink = sink

    def __repr__(self) -> str:
        return f"Route({self.name!r})"


# The versions the hub serves; a compact request under another ``V:`` is answered E:n 505.
SERVED_VERSIONS = frozenset((b"HTTP/1.0", b"HTTP/1.1"))

class Decision:
    """The router's verdict for one (state, method, target).

    ``status`` is 0 when the message is accepted, else the HTTP status to
    answer with; ``headers`` are extra response headers (``Allow``,
    ``WWW-Authenticate``).
    """

    __slots__ = ("method", "status", "reason", "route", "captures", "user", "headers")

    def __init__(
        self,
        method: bytes,
        status: int = 0,
        reason: str = "",
        route: Route | None = None,
        captures: dict[str, str] | None = None,
        user: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.method = method
        self.status = status
        self.reason = reason
        self.route = route
        self.captures = captures or {}
        self.user = user
        self.headers = headers

    def __repr__(self) -> str:
        return f"Decision({self.status}, {self.reason!r}, route={self.route}, user={self.user!r})"


class Router:
    """Matches targets against routes in configuration order and checks credentials."""

    def __init__(self, routes: Sequence[Route], authenticator: Authenticator) -> None:
        self.routes = tuple(routes)
        self.authenticator = authenticator
        self.generation = 0  # bumped by replace: every connection's DecisionCache starts over

    def replace(self, routes: Sequence[Route]) -> None:
        """Route by ``routes`` from now on (a reload, after any change of users).

        Connections keep their compact state; their cached decisions are
        dropped at their next batch, which is decided afresh.
        """
        self.routes = tuple(routes)
        self.generation += 1

    def authenticate(self, state: State) -> AuthResult:
        return self.authenticator.authenticate(state.header(b"authorization"))

    def decide(self, auth: AuthResult, method: bytes, target: bytes) -> Decision:
        """``auth`` is ``authenticate(state)``, computed once per state by the caller."""
        path = target.split(b"?", 1)[0]
        allowed: set[bytes] = set()
        for route in self.routes:
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            if method not in route.methods:
                allowed |= route.methods
                continue
            captures = {k: unquote(v.decode("latin-1")) for k, v in m.groupdict().items()}
            user = auth.user
            # Credentials that fail are refused even on an anonymous route: a
            # producer with a stale token should hear about it, not be let in.
            if auth.status is AuthStatus.BAD_CREDENTIALS:
                return Decision(method, 401, "bad credentials", route, captures, None, (WWW_AUTHENTICATE,))
            if route.users is not None:
                if user is None:
                    return Decision(method, 401, "credentials required", route, captures, None, (WWW_AUTHENTICATE,))
                if user not in route.users:
                    return Decision(method, 403, f"user {user} may not use this route", route, captures, user)
            return Decision(method, 0, "", route, captures, user)
        if allowed:
            allow = b", ".join(sorted(allowed))
            return Decision(method, 405, "method not allowed", headers=((b"Allow", allow),))
        return Decision(method, 404, "no route")


class StateDecisions:
    """One state's authentication and its decisions, by method then target.

    ``methods`` maps a method to its ``target -> Decision`` dict; ``size``
    counts the decisions under all methods together, for the bound.
    """

    __slots__ = ("auth", "methods", "size", "version_ok")

    def __init__(self, auth: AuthResult) -> None:
        self.auth = auth
        self.methods: dict[bytes, dict[bytes, Decision]] = {}
        self.size = 0
        self.version_ok = True  # HTTP/1.0 or HTTP/1.1: the versions the hub serves on both ports


class DecisionCache:
    """One connection's decisions, keyed by (state, method, target); bounded.

    At most ``MAX_STATES`` states and ``MAX_DECISIONS`` (method, target)
    pairs per state: 64 x 4096 = 262,144 decisions per connection at worst.
    A full level is cleared, not evicted piecemeal: a producer that keeps
    within the bound never misses, and one that does not pays the slow path
    it would have paid anyway.

    The hot path allocates nothing: callers hold ``for_state(state)`` while
    the state is unchanged and ``entry.methods[method]`` while the method
    is, and index that by target.  Nesting by method instead of keying by a
    ``(method, target)`` tuple saves a tuple per message.
    """

    MAX_STATES = 64
    MAX_DECISIONS = 4096

    __slots__ = ("router", "_states", "misses", "generation")

    def __init__(self, router: Router) -> None:
        self.router = router
        self._states: dict[State, StateDecisions] = {}
        self.misses = 0
        self.generation = router.generation

    def for_state(self, state: State) -> StateDecisions | None:
        """The decisions for ``state``: authentication done once per state.

        ``None`` when the state's credentials need a password hash first
        (see ``PasswordVerifier.verify``).
        """
        if self.generation != self.router.generation:  # reloaded: decide everything again
            self._states.clear()
            self.generation = self.router.generation
        entry = self._states.get(state)
        if entry is None:
            if self.router.authenticator.needs_hashing(state.header(b"authorization")):
                return None  # the caller checks the password off the reactor thread first
            if len(self._states) >= self.MAX_STATES:
                self._states.clear()
            entry = StateDecisions(self.router.authenticate(state))
            entry.version_ok = state.version in SERVED_VERSIONS
            self._states[state] = entry
        return entry

    def targets(self, entry: StateDecisions, method: bytes) -> dict[bytes, Decision]:
        """``entry``'s ``target -> Decision`` dict for ``method`` (empty if new)."""
        targets = entry.methods.get(method)
        if targets is None:
            targets = entry.methods[method] = {}
        return targets

    def decide(self, entry: StateDecisions, method: bytes, target: bytes) -> Decision:
        """The slow path behind a miss in ``targets(entry, method)``; caches the answer."""
        self.misses += 1
        if entry.version_ok:
            decision = self.router.decide(entry.auth, method, target)
        else:  # a compact V: line may name any HTTP/d.d; the plain port's reader refuses the rest too
            decision = Decision(method, 505, "HTTP version not supported")
        targets = self.targets(entry, method)
        if entry.size >= self.MAX_DECISIONS:
            # Every method's dict goes, but the caller holds this one: keep it, emptied.
            entry.methods.clear()
            targets.clear()
            entry.methods[method] = targets
            entry.size = 0
        targets[target] = decision
        entry.size += 1
        return decision
