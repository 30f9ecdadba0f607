"""Credential checks: scrypt password hashes and the ``Authorization`` header.

``hash_password`` / ``verify_password`` handle the ``scrypt$n$r$p$salt$key``
strings that ``msghub-passwd`` prints and ``[users.NAME] password`` holds.
``Authenticator`` turns an ``Authorization`` header value into an
``AuthResult``; it never raises on what a peer sent.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

if TYPE_CHECKING:
    from msghub.config import User

log = Logger()

__all__ = [
    "AuthResult",
    "AuthStatus",
    "Authenticator",
    "BAD_CREDENTIALS",
    "NO_CREDENTIALS",
    "PasswordHash",
    "PasswordVerifier",
    "hash_password",
    "parse_password_hash",
    "verify_password",
]

SALT_BYTES = 16
KEY_BYTES = 32
# A hash whose parameters need more memory than this is refused when the
# config is loaded: one typo in n must not make every login allocate gigabytes.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``scrypt$n$r$p$salt$key`` string."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @property
    def maxmem(self) -> int:
        # OpenSSL's scrypt needs 128*r*(n + p + 2) bytes; hashlib's default
        # cap (32 MiB) would refuse legitimate larger settings.
        return 128 * self.r * (self.n + self.p + 2) + 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: bytes, h: PasswordHash) -> bytes:
    return hashlib.scrypt(
        password, salt=h.salt, n=h.n, r=h.r, p=h.p, maxmem=h.maxmem, dklen=len(h.key)
    )


def _check_cost(h: PasswordHash) -> PasswordHash:
    if h.n < 2 or h.n & (h.n - 1):
        raise ValueError(f"N must be a power of 2 above 1, not {h.n}")
    if not (1 <= h.r <= 64 and 1 <= h.p <= 64):
        raise ValueError(f"R and P must be 1..64, not {h.r} and {h.p}")
    if h.maxmem > MAX_SCRYPT_MEMORY:
        raise ValueError(f"N={h.n}, R={h.r}, P={h.p} would need {h.maxmem >> 20} MiB per check")
    return h


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """A new ``scrypt$n$r$p$salt$key`` hash of ``password`` with a random 16-byte salt."""
    # Checked first: never hand out a hash that the config loader would refuse.
    h = _check_cost(PasswordHash(n, r, p, os.urandom(SALT_BYTES), b"\0" * KEY_BYTES))
    key = _scrypt(password.encode("utf-8"), h)
    return f"scrypt${n}${r}${p}${_b64(h.salt)}${_b64(key)}"


def parse_password_hash(stored: str) -> PasswordHash:
    """Parse a ``hash_password`` string; ``ValueError`` says what is wrong with it."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$N$R$P$SALT$KEY")
    try:
        n, r, p = (int(x) for x in parts[1:4])
    except ValueError:
        raise ValueError("N, R and P must be decimal integers") from None
    try:
        salt, key = (base64.b64decode(x, validate=True) for x in parts[4:6])
    except binascii.Error:
        raise ValueError("SALT and KEY must be base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("SALT must be at least 8 bytes and KEY at least 16")
    return _check_cost(PasswordHash(n, r, p, salt, key))


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; ``ValueError`` if ``stored`` is malformed."""
    h = parse_password_hash(stored)
    return hmac.compare_digest(_scrypt(password.encode("utf-8"), h), h.key)


class AuthStatus(enum.Enum):
    NO_CREDENTIALS = "no credentials"  # no Authorization header: anonymous
    BAD_CREDENTIALS = "bad credentials"  # malformed, unknown scheme, unknown user or wrong secret
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: AuthStatus
    user: str | None = None  # set only when status is AUTHENTICATED


NO_CREDENTIALS = AuthResult(AuthStatus.NO_CREDENTIALS)
BAD_CREDENTIALS = AuthResult(AuthStatus.BAD_CREDENTIALS)

# "Scheme SP credentials"; the scheme is case-insensitive (RFC 9110 11.1).
_HEADER = re.compile(rb"([A-Za-z]+) +([^ ]+) *\Z")


class Authenticator:
    """Checks ``Authorization`` header values against the configured users.

    Bearer: ``sha256(token)`` is looked up in a digest -> user dict, built
    once.  Basic: ``user:password`` is checked with scrypt against that
    user's ``password``.

    Results are kept in LRU caches per process, keyed by the raw header
    value, so a client's new connections do not pay scrypt again; a hit is
    one dict lookup (plus moving the entry to the young end).  Successes and
    wrong passwords have a cache each (``cache_max``, ``failures_max``): a
    client retrying the same bad password (or an attacker replaying one)
    costs a lookup instead of an scrypt run, and a flood of distinct wrong
    passwords pushes out only other failures, never a producer's success.
    Only results that were expensive or positive are cached; garbage that is
    rejected without hashing (malformed headers, unknown users or tokens)
    is not.  Distinct wrong passwords still cost one scrypt each; how many
    may run at once, and per peer, is ``PasswordVerifier``'s business.  The
    caches hold secrets only as long as the process already does (the config
    is fixed at start).
    """

    # Longer header values are rejected unchecked: bounds the cache's memory
    # (MAX_HEADER * cache_max) and the work one request can ask for.
    MAX_HEADER = 1024

    def __init__(self, users: Mapping[str, User], *, cache_max: int = 1024, failures_max: int = 4096) -> None:
        if cache_max < 1 or failures_max < 1:
            raise ValueError("cache_max and failures_max must be at least 1")
        self.cache_max = cache_max
        self.failures_max = failures_max
        self.cache_hits = 0
        self.generation = 0  # bumped by every replace_users: results checked before it are not stored
        self.replace_users(users)

    def replace_users(self, users: Mapping[str, User]) -> None:
        """Check against ``users`` from now on (a reload): every cached result is forgotten.

        Each table is built whole and then bound, so a check running in a
        worker thread reads either the old users or the new, never a mix; its
        result is not cached if it began before this call.
        """
        ok = {name: AuthResult(AuthStatus.AUTHENTICATED, name) for name in users}
        self._tokens = {u.token_sha256: ok[u.name] for u in users.values() if u.token_sha256}
        self._passwords = {u.name: parse_password_hash(u.password) for u in users.values() if u.password}
        self._ok = ok
        self._cache: OrderedDict[bytes, AuthResult] = OrderedDict()
        self._failures: OrderedDict[bytes, AuthResult] = OrderedDict()
        self.generation += 1

    @property
    def cache_size(self) -> int:
        return len(self._cache) + len(self._failures)

    def _cached(self, header_value: bytes) -> AuthResult | None:
        for cache in (self._cache, self._failures):
            result = cache.get(header_value)
            if result is not None:
                cache.move_to_end(header_value)
                return result
        return None

    def authenticate(self, header_value: bytes | None) -> AuthResult:
        """The result for one ``Authorization`` header value (``None``: no header)."""
        if header_value is None:
            return NO_CREDENTIALS
        result = self._cached(header_value)
        if result is not None:
            self.cache_hits += 1
            return result
        if len(header_value) > self.MAX_HEADER:
            return BAD_CREDENTIALS
        result, cacheable = self._check(header_value)
        self.store(header_value, result, cacheable)
        return result

    def needs_hashing(self, header_value: bytes | None) -> bool:
        """Whether ``authenticate(header_value)`` would run scrypt (a Basic
        password for a known user, not cached): callers then run ``check`` in
        a worker thread and ``store`` the result, instead of stalling."""
        if (
            header_value is None
            or header_value in self._cache
            or header_value in self._failures
            or len(header_value) > self.MAX_HEADER
        ):
            return False
        m = _HEADER.match(header_value.strip())
        if m is None or m.group(1).lower() != b"basic":
            return False
        try:
            name = base64.b64decode(m.group(2), validate=True).partition(b":")[0].decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return name in self._passwords

    def check(self, header_value: bytes) -> tuple[AuthResult, bool]:
        """The uncached check; reads only what __init__ built, so any thread may run it."""
        return self._check(header_value)

    def store(self, header_value: bytes, result: AuthResult, cacheable: bool, generation: int | None = None) -> None:
        """Cache a result ``check`` computed elsewhere (call from the reactor thread).

        ``generation`` is ``self.generation`` when the check began: a result
        from before a ``replace_users`` is dropped (the next request checks again).
        """
        if generation is not None and generation != self.generation:
            return
        if cacheable:
            if result.status is AuthStatus.AUTHENTICATED:
                cache, limit = self._cache, self.cache_max
            else:
                cache, limit = self._failures, self.failures_max
            cache[header_value] = result
            if len(cache) > limit:
                cache.popitem(last=False)

    def _check(self, header_value: bytes) -> tuple[AuthResult, bool]:
        m = _HEADER.match(header_value.strip())
        if m is None:
            return BAD_CREDENTIALS, False
        scheme, credentials = m.group(1).lower(), m.group(2)
        if scheme == b"bearer":
            result = self._tokens.get(hashlib.sha256(credentials).digest())
            return (result, True) if result else (BAD_CREDENTIALS, False)
        if scheme == b"basic":
            return self._check_basic(credentials)
        return BAD_CREDENTIALS, False

    def _check_basic(self, credentials: bytes) -> tuple[AuthResult, bool]:
        try:
            user_pass = base64.b64decode(credentials, validate=True)
            name_bytes, colon, password = user_pass.partition(b":")
            name = name_bytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return BAD_CREDENTIALS, False
        h = self._passwords.get(name)
        if not colon or h is None:
            return BAD_CREDENTIALS, False
        # The password stays bytes: hash_password hashed its UTF-8 form, and
        # bytes that are not UTF-8 can match no such form anyway.
        if hmac.compare_digest(_scrypt(password, h), h.key):
            return self._ok[name], True
        return BAD_CREDENTIALS, True


_RETRY_AFTER = ((b"Retry-After", b"1"),)
# What a request is answered when its password could not be checked:
# (status, reason, headers), as ingress records its refusals.
OVER_PEER = (429, "too many password checks from this address", _RETRY_AFTER)
OVER_HUB = (503, "too many password checks", _RETRY_AFTER)
CHECK_FAILED = (500, "internal error", ())


class PasswordVerifier(Service):
    """Runs ``Authenticator.check`` for uncached passwords on a small pool of its own.

    scrypt is deliberately slow (~50-200 ms a check), so hashing is bounded
    three ways: at most ``threads`` checks run at once, on threads no other
    work uses (Twisted's shared pool also resolves host names for webhooks);
    one peer address may have at most ``per_peer`` checks queued or running
    (over it: ``OVER_PEER``, 429); all peers together at most ``queue_max``
    (over it: ``OVER_HUB``, 503).  A free thread goes to the waiting peer with
    the fewest checks running, so a peer with a queue of wrong passwords
    delays a new producer by at most the checks already running.  Requests presenting a header
    that is being checked share that check and cost no budget.

    ``verify(header, peer)`` returns a Deferred that fires (on the reactor
    thread) with ``None`` once the result is in the authenticator's cache,
    or with a ``(status, reason, headers)`` refusal for the request that
    asked: over a budget, or ``CHECK_FAILED`` if ``check`` raised (a bug,
    logged and counted in ``errors``; nothing is cached, and the caller must
    not ask again for that request).  It never errbacks.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        reactor,
        *,
        threads: int = 2,
        per_peer: int = 2,
        queue_max: int = 64,
    ) -> None:
        self.authenticator = authenticator
        self.threads = threads
        self.per_peer = per_peer
        self.queue_max = queue_max
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="msghub-passwords")
        # Replaced by tests: (function, *args) -> Deferred of its result.
        self.run_in_thread: Callable[..., Deferred] = lambda f, *a: deferToThreadPool(reactor, self.pool, f, *a)
        self._waiting: dict[bytes, list[Deferred]] = {}  # header -> requests waiting for its check
        self._queues: dict[str, deque[bytes]] = {}  # peer -> headers waiting for a thread
        self._per_peer: dict[str, int] = {}  # peer -> its checks queued or running
        self._on_thread: dict[str, int] = {}  # peer -> its checks running
        self._served: dict[str, int] = {}  # peer -> when it last got a thread (a count of checks)
        self.busy = 0  # checks on a thread now (not "running": Service uses that name)
        self.checks = 0  # checks started
        self.refused = 0  # requests refused over a budget
        self.errors = 0  # checks that raised

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()  # waits for the checks on a thread: each is one scrypt run

    @property
    def pending(self) -> int:
        """Distinct headers queued or being checked."""
        return len(self._waiting)

    def verify(self, header: bytes, peer: str = "?") -> Deferred:
        waiting = self._waiting.get(header)
        if waiting is not None:
            d: Deferred = Deferred()
            waiting.append(d)
            return d
        count = self._per_peer.get(peer, 0)
        if count >= self.per_peer:
            self.refused += 1
            return succeed(OVER_PEER)
        if len(self._waiting) >= self.queue_max:
            self.refused += 1
            return succeed(OVER_HUB)
        d = Deferred()
        self._waiting[header] = [d]
        self._per_peer[peer] = count + 1
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = deque()
        queue.append(header)
        self._start()
        return d

    def _start(self) -> None:
        queues = self._queues
        on_thread = self._on_thread
        while queues and self.busy < self.threads:
            # The peer with the fewest checks on a thread goes first, then the one
            # served least recently: a newcomer never waits behind another peer's queue.
            served = self._served
            peer = min(queues, key=lambda p: (on_thread.get(p, 0), served.get(p, -1)))
            queue = queues[peer]
            header = queue.popleft()
            if not queue:
                del queues[peer]
            served[peer] = self.checks
            on_thread[peer] = on_thread.get(peer, 0) + 1
            self.busy += 1
            self.checks += 1
            self.run_in_thread(self.authenticator.check, header).addBoth(
                self._checked, header, peer, self.authenticator.generation
            )

    def _checked(self, result, header: bytes, peer: str, generation: int) -> None:
        self.busy -= 1
        for counts in (self._per_peer, self._on_thread):
            count = counts.pop(peer) - 1
            if count:
                counts[peer] = count
        if peer not in self._per_peer:
            del self._served[peer]
        if isinstance(result, Failure):
            self.errors += 1
            log.failure("password check failed", result)
            outcome = CHECK_FAILED
        else:
            auth_result, cacheable = result
            self.authenticator.store(header, auth_result, cacheable, generation)
            outcome = None
        for d in self._waiting.pop(header):
            d.callback(outcome)
        self._start()
