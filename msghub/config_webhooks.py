"""The ``[webhooks.NAME]`` sections and a route's ``webhooks = [...]`` destination.

Split from ``msghub.config`` by responsibility: everything about webhook
targets is validated here, into frozen objects ``msghub.forward.webhook``
reads once.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from msghub.tls import TLS_KEYS, ClientTLS, load_client_tls

DEFAULT_TIMEOUT = 15.0
# 8 attempts over about 27.5 hours (Svix's schedule): a receiver down for a
# day loses nothing.  The old 2.5 h default dead-lettered an overnight outage.
DEFAULT_RETRY = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
# Statuses retried, as (low, high) ranges: every non-2xx but 410 (Standard Webhooks).
RETRY_ON_DEFAULT = ((300, 409), (411, 999))
_CLASS = re.compile(r"([345])xx\Z")
DEFAULT_CONCURRENCY = 8
# The Standard Webhooks spec asks for 24 to 64 random bytes.
SECRET_MIN, SECRET_MAX = 24, 64
SECRET_PREFIX = "whsec_"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # also a spool name: webhook:NAME
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 field name
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")  # visible ASCII, space, tab: no CR/LF/NUL
# Fields the hub writes itself: framing, the connection, and the signature.
RESERVED_HEADERS = frozenset(
    (
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
        "trailer", "expect", "content-type", "webhook-id", "webhook-timestamp", "webhook-signature",
    )
)
_KEYS = (
    "url", "secret", "timeout", "retry", "concurrency", "ordered", "headers", "retry_on", "rate", "disable_after",
    *TLS_KEYS,
)


@dataclass(frozen=True)
class WebhookTarget:
    name: str
    url: str
    scheme: str = "http"  # "http" or "https"
    host: str = "127.0.0.1"
    port: int = 80
    path: bytes = b"/"  # path and query, as sent in the request line
    secrets: tuple[bytes, ...] = field(default=(), repr=False)  # decoded keys; first signs, all are sent
    timeout: float = DEFAULT_TIMEOUT
    retry: tuple[float, ...] = DEFAULT_RETRY
    concurrency: int = DEFAULT_CONCURRENCY
    ordered: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()
    client_tls: ClientTLS = ClientTLS()  # https: ca_file, client_cert, client_key
    retry_on: tuple[tuple[int, int], ...] = RETRY_ON_DEFAULT  # statuses retried; other non-2xx but 410 die
    rate: float | None = None  # attempts started per second at most; None: no limit
    disable_after: float = 0.0  # seconds of continuous failure before disabling; 0: never

    @property
    def spool_name(self) -> str:
        return spool_name(self.name)


def spool_name(target: str) -> str:
    """The spool name holding a target's undelivered messages."""
    return f"webhook:{target}"


Add = Callable[[str, str], None]  # (key, problem)


def parse_secret(value: str) -> bytes:
    """``whsec_`` + base64 (padding optional) -> the HMAC key; ValueError says what is wrong."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f'must start with "{SECRET_PREFIX}" followed by base64')
    text = value[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f'must be "{SECRET_PREFIX}" followed by base64') from None
    if not SECRET_MIN <= len(key) <= SECRET_MAX:
        raise ValueError(f"must decode to {SECRET_MIN} to {SECRET_MAX} bytes, not {len(key)}")
    return key


def _number(value: object) -> float | None:
    """A positive int or float, else None (booleans are not numbers here)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value != float("inf"):
        return float(value)
    return None


def _url(value: object, key: str, add: Add) -> dict:
    if not isinstance(value, str) or not value:
        add(key, "required: an http:// or https:// URL")
        return {}
    if not value.isascii() or any(c in value for c in " \t\r\n\x00"):
        add(key, "must be ASCII without spaces (percent-encode the rest)")
        return {}
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        add(key, 'must start with "http://" or "https://"')
        return {}
    if not parts.hostname:
        add(key, "has no host")
        return {}
    if parts.username is not None or parts.password is not None:
        add(key, "must not carry credentials; send them with headers = {Authorization = \"...\"}")
        return {}
    if parts.fragment:
        add(key, "must not have a #fragment")
        return {}
    try:
        port = parts.port
    except ValueError as e:
        add(key, f"bad port: {e}")
        return {}
    if parts.scheme == "https":
        try:
            import OpenSSL  # noqa: F401  (Twisted's TLS needs it; check now, not at the first delivery)
        except ImportError:
            add(key, "https needs TLS support, which is not installed (pip install 'twisted[tls]')")
            return {}
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return {
        "url": value,
        "scheme": parts.scheme,
        "host": parts.hostname,
        "port": port or (443 if parts.scheme == "https" else 80),
        "path": path.encode("ascii"),
    }


def _secrets(value: object, key: str, add: Add) -> tuple[bytes, ...]:
    # An array is for rotation: every key signs, so receivers holding either verify.
    items = value if isinstance(value, list) else [value]
    if not items:
        add(key, "must not be an empty array; omit it to send unsigned")
        return ()
    keys = []
    for i, item in enumerate(items):
        item_key = f"{key}[{i}]" if isinstance(value, list) else key
        if not isinstance(item, str):
            add(item_key, f'must be a string "{SECRET_PREFIX}..." (or an array of them)')
            continue
        try:
            keys.append(parse_secret(item))
        except ValueError as e:
            add(item_key, str(e))
    return tuple(keys)


def _headers(value: object, key: str, add: Add) -> tuple[tuple[bytes, bytes], ...]:
    if not isinstance(value, dict):
        add(key, 'must be a table of strings, e.g. {X-Source = "msghub"}')
        return ()
    headers = []
    for name, text in value.items():
        item_key = f"{key}.{name}" if re.match(r"[A-Za-z0-9_-]+\Z", name) else f'{key}."{name}"'
        if not _TOKEN.match(name):
            add(item_key, "is not an HTTP field name")
        elif name.lower() in RESERVED_HEADERS:
            add(item_key, "is set by msghub itself and cannot be configured")
        elif not isinstance(text, str) or not _FIELD_VALUE.match(text):
            add(item_key, "must be a string of visible ASCII characters")
        else:
            headers.append((name.encode("ascii"), text.strip().encode("ascii")))
    return tuple(headers)


def _retry_on(value: object, key: str, add: Add) -> tuple[tuple[int, int], ...]:
    """``"non-2xx"``, or an array of statuses and classes (``"5xx"``) -> status ranges."""
    if value == "non-2xx":
        return RETRY_ON_DEFAULT
    problem = 'must be "non-2xx" or an array of statuses and classes, e.g. ["5xx", 408, 429]'
    if not isinstance(value, list):
        add(key, problem)
        return RETRY_ON_DEFAULT
    ranges = []
    for item in value:
        match = _CLASS.match(item) if isinstance(item, str) else None  # 410 in "4xx" still disables
        if match:
            low = int(match[1]) * 100
            ranges.append((low, low + 99))
        elif type(item) is int and 300 <= item <= 999 and item != 410:
            ranges.append((item, item))
        else:  # 410 always disables the target, as Standard Webhooks says ("4xx" means the others)
            add(key, f"{item!r}: {problem} (not 2xx or 410)")
            return RETRY_ON_DEFAULT
    return tuple(ranges)


def load_webhooks(
    table: dict, add: Add, check_keys: Callable[[dict, tuple, str], None]
) -> Mapping[str, WebhookTarget]:
    """Each ``[webhooks.NAME]`` table -> a WebhookTarget (problems go to ``add``)."""
    targets: dict[str, WebhookTarget] = {}
    for name, entry in table.items():
        key = f"webhooks.{name}" if re.match(r"[A-Za-z0-9_-]+\Z", name) else f'webhooks."{name}"'
        if not isinstance(entry, dict):
            add(key, "must be a table ([webhooks.NAME])")
            continue
        if not _NAME.match(name):
            add(key, "a target name is letters, digits, '_', '.', '-', not starting with '_.-'")
            continue
        check_keys(entry, _KEYS, key)
        values: dict = {"name": name}
        values.update(_url(entry.get("url"), f"{key}.url", add))
        if "secret" in entry:
            values["secrets"] = _secrets(entry["secret"], f"{key}.secret", add)
        if "timeout" in entry:
            timeout = _number(entry["timeout"])
            if timeout is None:
                add(f"{key}.timeout", "must be a positive number of seconds")
            else:
                values["timeout"] = timeout
        if "retry" in entry:
            retry = entry["retry"]
            delays = [_number(d) for d in retry] if isinstance(retry, list) else [None]
            if None in delays:
                add(f"{key}.retry", "must be an array of positive numbers of seconds (may be empty: no retries)")
            else:
                values["retry"] = tuple(delays)
        ordered = entry.get("ordered", False)
        if not isinstance(ordered, bool):
            add(f"{key}.ordered", "must be true or false")
            ordered = False
        values["ordered"] = ordered
        if "concurrency" in entry:
            concurrency = entry["concurrency"]
            if type(concurrency) is not int or concurrency < 1:
                add(f"{key}.concurrency", "must be a positive integer")
            elif ordered and concurrency != 1:
                # Order is only kept with one attempt in flight; rather than
                # quietly ignore the number, say so.
                add(f"{key}.concurrency", "must be 1 (or omitted) when ordered = true")
            else:
                values["concurrency"] = concurrency
        elif ordered:
            values["concurrency"] = 1
        if "headers" in entry:
            values["headers"] = _headers(entry["headers"], f"{key}.headers", add)
        values["client_tls"] = load_client_tls(entry, key, add)
        if values.get("scheme") == "http":
            for tls_key in TLS_KEYS:
                if tls_key in entry:
                    add(f"{key}.{tls_key}", "is for an https:// url; this one is http://")
        if "retry_on" in entry:
            values["retry_on"] = _retry_on(entry["retry_on"], f"{key}.retry_on", add)
        if "rate" in entry:
            values["rate"] = _number(entry["rate"])
            if values["rate"] is None:
                add(f"{key}.rate", "must be a positive number of attempts per second")
        if "disable_after" in entry:
            after = entry["disable_after"]
            values["disable_after"] = 0.0 if after == 0 and type(after) in (int, float) else _number(after)
            if values["disable_after"] is None:
                add(f"{key}.disable_after", "must be a number of seconds (0: never disable)")
        if "url" in values:
            targets[name] = WebhookTarget(**values)
    return targets


def check_route_webhooks(value: object, declared: set[str]) -> tuple[object, str | None]:
    """A route's ``webhooks = ["TARGET", ...]``: declared targets, each once.

    ``declared`` holds every [webhooks.NAME] written, valid or not, so a bad
    target is reported once, at its own key.
    """
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None, 'must be a non-empty array of target names, e.g. ["orders"]'
    for i, name in enumerate(value):
        if name in value[:i]:
            return None, f"{name!r} is listed twice"
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            return None, f"no target {name!r} in [webhooks] (defined: {known})"
    return tuple(value), None
