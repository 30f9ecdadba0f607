"""``[status]``: the admin port's status page and its visitors demo.

Split from ``msghub.config`` by responsibility.  The page itself needs no
configuration; ``[status]`` only names the two URLs of the demo from the
EvServer articles, as the browser reaches them: every view of the page POSTs
its visitor (user-agent, referrer) to ``demo_post``, and every open page reads
the visitors back as Server-Sent Events from ``demo_events``.  Both are on the
plain HTTP port, so the same route and subscription machinery carries them,
through a tap or through RabbitMQ as the conf says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

Add = Callable[[str, str], None]  # (key, problem)
_KEYS = ("demo_post", "demo_events")


@dataclass(frozen=True)
class StatusConfig:
    demo_post: str | None = None  # URL the page POSTs each view to (a route accepting anonymous POSTs)
    demo_events: str | None = None  # URL of a subscription the page reads the visitors from
    demo_event: str | None = None  # derived: the event name that subscription sends them as
    demo_route: str | None = None  # derived: the route demo_post reaches


def load_status(
    table: dict, routes: tuple, subscriptions: tuple, add: Add, check_keys: Callable[[dict, tuple, str], None],
    compile_template: Callable[[str], re.Pattern],
) -> StatusConfig:
    """Check ``[status]`` against the already-loaded routes and subscriptions."""
    check_keys(table, _KEYS, "status")
    values: dict = {}
    route = _reached(table, "demo_post", routes, "route", add, compile_template)
    if route is not None:
        if b"POST" not in route.methods or route.users is not None:
            add("status.demo_post", f"route {route.name!r} must accept anonymous POSTs for the page to send to it")
        else:
            values["demo_post"], values["demo_route"] = table["demo_post"], route.name
    sub = _reached(table, "demo_events", subscriptions, "subscription", add, compile_template)
    if sub is not None:
        event = _event_name(sub)
        if not sub.cors_origins:
            # The page is served by the admin port, another origin than the HTTP port.
            add("status.demo_events", f"subscription {sub.name!r} needs cors_origins for the page to read it")
        elif sub.users is not None:
            add("status.demo_events", f"subscription {sub.name!r} must allow anonymous readers")
        elif event is None:
            add("status.demo_events", f"subscription {sub.name!r} must be a route tap or an AMQP binding"
                " with a plain key (no *, # or captures), so the page knows its event name")
        else:
            values["demo_events"], values["demo_event"] = table["demo_events"], event
    if ("demo_post" in table) != ("demo_events" in table):
        add("status", "demo_post and demo_events go together (the page sends to one and reads the other)")
    return StatusConfig(**values)


def _reached(table: dict, name: str, entries: tuple, what: str, add: Add, compile_template):
    """The route or subscription the URL ``table[name]`` reaches; None if absent or (reported) none."""
    if name not in table:
        return None
    path = _url_path(table[name], f"status.{name}", add)
    if path is None:
        return None
    for entry in entries:
        if compile_template(entry.match).fullmatch(path.encode()):
            return entry
    add(f"status.{name}", f"no {what} matches {path!r}")
    return None


def _url_path(value: object, key: str, add: Add) -> str | None:
    if not isinstance(value, str):
        add(key, "must be a URL string")
        return None
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        add(key, f"must be an http:// or https:// URL, not {value!r}")
        return None
    if url.query or url.fragment:
        add(key, "must have no query or fragment")
        return None
    return url.path or "/"


def _event_name(sub) -> str | None:
    """Taps name events after the route; bindings after the routing key, here the binding itself."""
    if sub.route is not None:
        return sub.route
    binding = sub.amqp.binding
    if binding is None or any(c in binding for c in "*#{"):
        return None
    return binding
