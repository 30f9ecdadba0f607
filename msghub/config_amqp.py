"""The ``[amqp]`` section and a route's ``amqp = {...}`` destination.

Split from ``msghub.config`` by responsibility: everything RabbitMQ-specific
is validated here, into frozen objects ``msghub.forward.amqp`` reads once.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

from msghub.tls import TLS_KEYS, ClientTLS, load_client_tls

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
# Exchanges every RabbitMQ vhost has; "" is the default exchange.
PREDEFINED_EXCHANGES = frozenset(
    ("", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match")
)
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,255}\Z")  # AMQP 0-9-1 exchange/queue name
WHEN_BROKER_DOWN = ("spool", "reject")


def spool_name(route: str) -> str:
    """The spool name holding a route's messages while the broker is unavailable."""
    return f"amqp:{route}"


@dataclass(frozen=True)
class ExchangeConfig:
    name: str
    type: str = "topic"
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True)
class QueueConfig:
    name: str
    durable: bool = True
    bind: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)


@dataclass(frozen=True)
class AmqpConfig:
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2f"
    host: str = "127.0.0.1"
    port: int = 5672
    tls: bool = False
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"
    heartbeat: int = 30  # seconds; 0 turns heartbeats off
    confirm_window: int = 10_000  # publishes awaiting the broker's confirm
    spool_after: float = 5.0  # seconds unavailable (down, blocked, window full) before spooling
    exchanges: tuple[ExchangeConfig, ...] = ()
    queues: tuple[QueueConfig, ...] = ()
    client_tls: ClientTLS = ClientTLS()  # amqps://: ca_file, client_cert, client_key

    def exchange(self, name: str) -> ExchangeConfig | None:
        for exchange in self.exchanges:
            if exchange.name == name:
                return exchange
        return None


@dataclass(frozen=True)
class AmqpRoute:
    exchange: str
    routing_key: str  # a template: {capture} is replaced by the route's captures
    mandatory: bool = True  # unroutable messages are refused instead of dropped


Add = Callable[[str, str], None]  # (key, problem)


def parse_url(url: str) -> dict:
    """``amqp[s]://user:password@host:port/vhost`` -> keyword arguments for AmqpConfig."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError('must start with "amqp://" or "amqps://"')
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad port: {e}") from None
    tls = parts.scheme == "amqps"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return {
        "url": url,
        "host": parts.hostname,
        "port": port or (5671 if tls else 5672),
        "tls": tls,
        # RFC-style AMQP URIs: an empty path means the default vhost "/".
        "vhost": unquote(path) if path else "/",
        "username": unquote(parts.username) if parts.username is not None else "guest",
        "password": unquote(parts.password) if parts.password is not None else "guest",
    }


def _bool(table: dict, name: str, key: str, add: Add, default: bool) -> bool:
    value = table.get(name, default)
    if isinstance(value, bool):
        return value
    add(f"{key}.{name}", "must be true or false")
    return default


def load_amqp(table: dict, add: Add, check_keys: Callable[[dict, tuple, str], None]) -> AmqpConfig:
    check_keys(table, ("url", "heartbeat", "confirm_window", "spool_after", "exchanges", "queues", *TLS_KEYS), "amqp")
    values: dict = {}
    url = table.get("url", AmqpConfig.url)
    try:
        values.update(parse_url(url) if isinstance(url, str) else parse_url(""))
    except ValueError as e:
        add("amqp.url", f"{e} (expected amqp://user:password@host:port/vhost)")
    values["client_tls"] = load_client_tls(table, "amqp", add)
    if not values.get("tls", True):
        for tls_key in TLS_KEYS:
            if tls_key in table:
                add(f"amqp.{tls_key}", "is for an amqps:// url; this one is amqp://")
    for field, kind in (("heartbeat", int), ("confirm_window", int), ("spool_after", float)):
        if field in table:
            value = table[field]
            ok = type(value) is int or (kind is float and type(value) is float)
            if not ok or value < 0 or (field == "confirm_window" and value < 1):
                add(f"amqp.{field}", "must be a positive number" if field != "heartbeat" else "must be >= 0")
            else:
                values[field] = kind(value)
    exchanges = []
    raw = table.get("exchanges", [])
    for i, entry in enumerate(raw if isinstance(raw, list) else []):
        key = f"amqp.exchanges[{i}]"
        if not isinstance(entry, dict):
            add(key, "must be a table ([[amqp.exchanges]])")
            continue
        check_keys(entry, ("name", "type", "durable", "auto_delete"), key)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            add(f"{key}.name", "required: 1-255 letters, digits, '_', '.', ':', '-'")
            continue
        kind = entry.get("type", "topic")
        if kind not in EXCHANGE_TYPES:
            add(f"{key}.type", f"must be one of {', '.join(EXCHANGE_TYPES)}")
        exchanges.append(
            ExchangeConfig(
                name,
                kind if kind in EXCHANGE_TYPES else "topic",
                _bool(entry, "durable", key, add, True),
                _bool(entry, "auto_delete", key, add, False),
            )
        )
    if not isinstance(raw, list):
        add("amqp.exchanges", "must be an array of tables ([[amqp.exchanges]])")
    declared = {e.name for e in exchanges} | PREDEFINED_EXCHANGES
    queues = []
    raw = table.get("queues", [])
    for i, entry in enumerate(raw if isinstance(raw, list) else []):
        key = f"amqp.queues[{i}]"
        if not isinstance(entry, dict):
            add(key, "must be a table ([[amqp.queues]])")
            continue
        check_keys(entry, ("name", "durable", "bind"), key)
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            add(f"{key}.name", "required: 1-255 letters, digits, '_', '.', ':', '-'")
            continue
        binds = []
        for j, bind in enumerate(entry.get("bind", [])):
            bkey = f"{key}.bind[{j}]"
            if not isinstance(bind, dict) or not isinstance(bind.get("exchange"), str):
                add(bkey, 'must be {exchange = "NAME", key = "ROUTING.KEY"}')
                continue
            check_keys(bind, ("exchange", "key"), bkey)
            if bind["exchange"] not in declared:
                add(f"{bkey}.exchange", f"unknown exchange {bind['exchange']!r}: declare it in [[amqp.exchanges]]")
            routing = bind.get("key", "")
            if not isinstance(routing, str) or len(routing.encode()) > 255:
                add(f"{bkey}.key", "must be a string of at most 255 bytes")
                continue
            binds.append((bind["exchange"], routing))
        queues.append(QueueConfig(name, _bool(entry, "durable", key, add, True), tuple(binds)))
    if not isinstance(raw, list):
        add("amqp.queues", "must be an array of tables ([[amqp.queues]])")
    return AmqpConfig(**values, exchanges=tuple(exchanges), queues=tuple(queues))


def check_route_amqp(value: object, captures: set[str], amqp: AmqpConfig | None) -> tuple[object, str | None]:
    """A route's ``amqp = {exchange = ..., routing_key = ..., mandatory = ...}``."""
    if not isinstance(value, dict):
        return None, 'must be {exchange = "NAME", routing_key = "KEY.{capture}"}'
    unknown = set(value) - {"exchange", "routing_key", "mandatory"}
    if unknown:
        return None, f"unknown key {sorted(unknown)[0]!r}"
    exchange = value.get("exchange")
    if not isinstance(exchange, str):
        return None, "exchange: required string"
    if amqp is None:
        return None, "needs an [amqp] section"
    if exchange not in PREDEFINED_EXCHANGES and amqp.exchange(exchange) is None:
        return None, f"unknown exchange {exchange!r}: declare it in [[amqp.exchanges]]"
    routing_key = value.get("routing_key", "")
    if not isinstance(routing_key, str):
        return None, "routing_key: must be a string"
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(routing_key) if field is not None}
    except ValueError as e:
        return None, f"routing_key: {e}"
    missing = names - captures
    if missing:
        return None, f"routing_key uses {{{sorted(missing)[0]}}}, which the match template does not capture"
    mandatory = value.get("mandatory", True)
    if not isinstance(mandatory, bool):
        return None, "mandatory: must be true or false"
    return AmqpRoute(exchange, routing_key, mandatory), None
