"""``[[subscriptions]]``: GET paths on the plain HTTP port that push messages to readers.

Split from ``msghub.config`` by responsibility.  A subscription has one
source: an in-process tap of a route (``route = ...``), an AMQP binding
(``amqp = {exchange, binding}``, one exclusive auto-delete queue per
subscriber) or an AMQP stream (``amqp = {stream}``, resumable by offset).
Everything is checked here, once, into frozen objects ``msghub.push`` reads.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from msghub.config_amqp import PREDEFINED_EXCHANGES, AmqpConfig

OVERFLOW = ("gap", "close")
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,255}\Z")  # AMQP 0-9-1 exchange/queue name
_CAPTURE_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class AmqpSource:
    """``exchange`` + ``binding`` (a template over the match's captures), or ``stream``."""

    exchange: str | None = None
    binding: str | None = None
    stream: str | None = None
    prefetch: int = 256  # deliveries the broker may have in flight to one subscriber


@dataclass(frozen=True)
class SubscriptionConfig:
    name: str  # "name" key, default: the match template
    match: str
    route: str | None = None  # the tapped route's name
    amqp: AmqpSource | None = None
    users: tuple[str, ...] | None = None  # None: anonymous allowed
    cors_origins: tuple[str, ...] = ()  # "*" or exact origins; empty: no CORS headers
    buffer_bytes: int = 1 << 20  # events held for one slow subscriber before the overflow policy
    overflow: str = "gap"  # "gap": drop and say how many; "close": end with event: overflow
    heartbeat: int = 15  # seconds between ": heartbeat" comments
    poll_timeout: int = 25  # seconds a ?poll=1 request waits for its first event
    history_bytes: int = 1 << 20  # taps: recent events kept for Last-Event-ID and long-poll resume


_KEYS = (
    "name", "match", "route", "amqp", "users", "cors_origins", "buffer_bytes", "overflow",
    "heartbeat", "poll_timeout", "history_bytes",
)
_POSITIVE = ("buffer_bytes", "heartbeat", "poll_timeout")

Add = Callable[[str, str], None]  # (key, problem)


def load_subscriptions(
    value: object,
    routes: tuple,
    user_names: set[str],
    amqp: AmqpConfig | None,
    add: Add,
    check_keys: Callable[[dict, tuple, str], None],
    template_problems: Callable[[str], list[str]],
) -> tuple[SubscriptionConfig, ...]:
    """Check ``[[subscriptions]]`` against the already-loaded routes, users and ``[amqp]``."""
    if not isinstance(value, list):
        add("subscriptions", "must be an array of tables ([[subscriptions]])")
        return ()
    out: list[SubscriptionConfig] = []
    owner: dict[str, str] = {}
    for i, entry in enumerate(value):
        key = f"subscriptions[{i}]"
        if not isinstance(entry, dict):
            add(key, "must be a table ([[subscriptions]])")
            continue
        problems: list[tuple[str, str]] = []
        check_keys(entry, _KEYS, key)
        sub = _load_one(entry, key, routes, user_names, amqp, _collector(problems), template_problems)
        for k, p in problems:
            add(k, p)
        if sub is None or problems:
            continue
        if sub.match in owner:
            add(f"{key}.match", f"same path as {owner[sub.match]}")
            continue
        owner[sub.match] = key
        out.append(sub)
    names = [s.name for s in out]
    for i, sub in enumerate(out):
        if names.index(sub.name) != i:
            add("subscriptions", f"name {sub.name!r} is used twice; give each a distinct name")
    return tuple(out)


def _collector(found: list[tuple[str, str]]) -> Add:
    """An ``add`` that keeps each (key, problem) in ``found``."""
    return lambda key, problem: found.append((key, problem))


def _load_one(entry: dict, key: str, routes: tuple, user_names: set[str], amqp, add: Add, template_problems):
    match = entry.get("match")
    if not isinstance(match, str) or not match:
        add(f"{key}.match", 'required: a path template such as "/subscribe/quotes/{symbol}"')
        return None
    for problem in template_problems(match):
        add(f"{key}.match", problem)
    captures = set(_CAPTURE_NAME.findall(match))
    name = entry.get("name", match)
    if not isinstance(name, str) or not name:
        add(f"{key}.name", "must be a non-empty string")
    values: dict = {}
    if ("route" in entry) == ("amqp" in entry):
        add(key, 'needs exactly one source: route = "ROUTE"'
                 ' or amqp = {exchange = "X", binding = "K"} or amqp = {stream = "S"}')
    elif "route" in entry:
        values["route"] = _tapped_route(entry["route"], captures, routes, f"{key}.route", add)
    else:
        values["amqp"] = _amqp_source(entry["amqp"], captures, amqp, f"{key}.amqp", add)
    if "users" in entry:
        users = entry["users"]
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            add(f"{key}.users", "must be an array of user names")
        elif not users:
            add(f"{key}.users", "is empty, so no one may subscribe; omit it for anonymous")
        else:
            for j, user in enumerate(users):
                if user not in user_names:
                    add(f"{key}.users[{j}]", f"no user {user!r} in [users]")
            values["users"] = tuple(dict.fromkeys(users))
    if "cors_origins" in entry:
        values["cors_origins"] = _origins(entry["cors_origins"], f"{key}.cors_origins", add)
    for field in _POSITIVE:
        if field in entry:
            v = entry[field]
            if type(v) is not int or v <= 0:
                add(f"{key}.{field}", f"must be a positive integer, not {v!r}")
            else:
                values[field] = v
    if "history_bytes" in entry:
        v = entry["history_bytes"]
        if type(v) is not int or v < 0:
            add(f"{key}.history_bytes", f"must be an integer >= 0 (0: keep none), not {v!r}")
        elif "route" not in entry:
            add(f"{key}.history_bytes", "only applies to route taps (streams keep their own history)")
        else:
            values["history_bytes"] = v
    if "overflow" in entry:
        if entry["overflow"] not in OVERFLOW:
            add(f"{key}.overflow", f'must be "gap" or "close", not {entry["overflow"]!r}')
        else:
            values["overflow"] = entry["overflow"]
    if values.get("route", "") is None or values.get("amqp", "") is None or not isinstance(name, str):
        return None
    return SubscriptionConfig(name=name, match=match, **values)


def _tapped_route(value: object, captures: set[str], routes: tuple, key: str, add: Add) -> str | None:
    """A route's name or its match template; the subscription's captures filter what it taps."""
    if not isinstance(value, str):
        add(key, "must be a route's name or match template")
        return None
    found = [r for r in routes if r.name == value] or [r for r in routes if r.match == value]
    if len(found) != 1:
        known = ", ".join(repr(r.name) for r in routes) or "none"
        add(key, f"no route named or matching {value!r} (routes: {known})")
        return None
    route = found[0]
    extra = captures - set(_CAPTURE_NAME.findall(route.match))
    if extra:
        add(key, f"the match captures {{{sorted(extra)[0]}}}, which route {route.name!r} does not capture")
        return None
    return route.name


def _amqp_source(value: object, captures: set[str], amqp: AmqpConfig | None, key: str, add: Add) -> AmqpSource | None:
    if not isinstance(value, dict):
        add(key, 'must be {exchange = "X", binding = "K.{capture}"} or {stream = "S"}')
        return None
    unknown = set(value) - {"exchange", "binding", "stream", "prefetch"}
    if unknown:
        add(key, f"unknown key {sorted(unknown)[0]!r}")
        return None
    if amqp is None:
        add(key, "needs an [amqp] section")
        return None
    prefetch = value.get("prefetch", AmqpSource.prefetch)
    if type(prefetch) is not int or not 0 < prefetch <= 65535:
        add(f"{key}.prefetch", "must be an integer from 1 to 65535")
        return None
    if "stream" in value:
        if "exchange" in value or "binding" in value:
            add(key, "a stream source takes no exchange or binding (bind the stream queue in RabbitMQ)")
            return None
        stream = value["stream"]
        if not isinstance(stream, str) or not _NAME.match(stream):
            add(f"{key}.stream", "must be a queue name: 1-255 letters, digits, '_', '.', ':', '-'")
            return None
        if captures:
            add(key, "a stream source cannot filter by path captures: use a match without {captures}")
            return None
        return AmqpSource(stream=stream, prefetch=prefetch)
    exchange = value.get("exchange")
    if not isinstance(exchange, str):
        add(f"{key}.exchange", "required string (or stream = \"S\")")
        return None
    if exchange not in PREDEFINED_EXCHANGES and amqp.exchange(exchange) is None:
        add(f"{key}.exchange", f"unknown exchange {exchange!r}: declare it in [[amqp.exchanges]]")
        return None
    if exchange == "":
        add(f"{key}.exchange", "the default exchange cannot be bound to")
        return None
    binding = value.get("binding", "#")
    if not isinstance(binding, str):
        add(f"{key}.binding", "must be a string")
        return None
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(binding) if f is not None}
    except ValueError as e:
        add(f"{key}.binding", str(e))
        return None
    missing = names - captures
    if missing:
        add(f"{key}.binding", f"uses {{{sorted(missing)[0]}}}, which the match template does not capture")
        return None
    return AmqpSource(exchange=exchange, binding=binding, prefetch=prefetch)


def _origins(value: object, key: str, add: Add) -> tuple[str, ...]:
    if not isinstance(value, list):
        add(key, 'must be an array of origins such as ["https://app.example"] or ["*"]')
        return ()
    out = []
    for j, origin in enumerate(value):
        if origin == "*":
            out.append(origin)
            continue
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path
            or parts.query
            or parts.fragment
        ):
            add(f"{key}[{j}]", f'must be "*" or scheme://host[:port] with no path, not {origin!r}')
            continue
        out.append(origin.lower())
    if "*" in out and len(out) > 1:
        add(key, '"*" allows every origin: list it alone')
    return tuple(out)
