"""The start-up summary: one log line per route, broker and webhook target, with no secrets."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.logger import Logger

from msghub.admin.status import route_destination
from msghub.config import Config, RouteConfig

log = Logger()


def _destination(route: RouteConfig) -> str:
    """The status page's name for it, and for AMQP the key and what happens while the broker is down."""
    amqp = route.amqp
    if amqp is None:
        return route_destination(route)
    when_down = "spooled" if route.when_broker_down == "spool" else "refused (503)"
    return f"amqp exchange {amqp.exchange!r} key {amqp.routing_key!r}, {when_down} while the broker is down"


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def summary(config: Config) -> list[str]:
    """What the conf sets up, as log lines: the routes in match order, the broker, the targets."""
    lines = []
    for route in config.routes:
        methods = ",".join(m.decode() for m in route.methods)
        users = "anonymous" if route.users is None else "users " + ", ".join(route.users)
        lines.append(f"route {route.name}: {methods} {route.match} -> {_destination(route)} ({users})")
    if config.amqp is not None:
        amqp = config.amqp
        scheme = "amqps" if amqp.tls else "amqp"
        lines.append(f"amqp broker: {scheme}://{amqp.host}:{amqp.port} vhost {amqp.vhost!r} as {amqp.username!r}")
    for name, target in config.webhooks.items():
        lines.append(f"webhook target {name}: {safe_url(target.url)}")
    for sub in config.subscriptions:
        source = f"route {sub.route}" if sub.route is not None else "amqp"
        lines.append(f"subscription {sub.name}: GET {sub.match} <- {source}")
    return lines


def log_summary(config: Config) -> None:
    for line in summary(config):
        log.info("{line}", line=line)
