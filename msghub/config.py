"""The hub's TOML configuration, parsed once into frozen, validated objects.

Every problem is reported as ``FILE: key: problem`` (all of them, not just the
first), and unknown keys are errors, so a typo never silently changes
behaviour.  Nothing reads configuration on the hot path.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from twisted.internet.endpoints import serverFromString

from msghub.auth import parse_password_hash
from msghub.config_amqp import WHEN_BROKER_DOWN, AmqpConfig, AmqpRoute, check_route_amqp, load_amqp
from msghub.config_amqp import spool_name as amqp_spool_name
from msghub.config_paths import conf_folder, resolve_endpoint, resolve_path
from msghub.config_status import StatusConfig, load_status
from msghub.config_subscriptions import SubscriptionConfig, load_subscriptions
from msghub.config_webhooks import WebhookTarget, check_route_webhooks, load_webhooks
from msghub.router import compile_template


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds ``FILE: key: problem`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Listen:
    # Endpoint strings; the file paths of unix: and ssl: ones are absolute (msghub.config_paths).
    http: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    compact: tuple[str, ...] = ("tcp:8081:interface=127.0.0.1",)
    admin: tuple[str, ...] = ("tcp:8082:interface=127.0.0.1",)
    backlog: int = 1024  # listen() backlog of tcp:/ssl: endpoints that name none (Twisted's is 50)


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "var/msghub.db"  # loaded: absolute; a relative one is taken from the conf file's folder
    synchronous: str = "full"  # "full": fsync every group commit; "normal": WAL, fsync at checkpoints
    max_bytes: int | None = None  # cap on the database file; past it appends get 503 as on a full disk
    read_bytes: int = 4 << 20  # body bytes one forwarder read may load (whole segments, at least one)
    max_queue_bytes: int = 256 << 20  # body bytes queued for the next commit; past it appends get 503


@dataclass(frozen=True)
class User:
    name: str
    token_sha256: bytes | None = None  # 32 raw bytes
    password: str | None = None  # msghub-passwd's scrypt hash string


@dataclass(frozen=True)
class RouteConfig:
    name: str  # "name" key, default: the match template
    match: str
    methods: tuple[bytes, ...] = (b"POST",)
    users: tuple[str, ...] | None = None  # None: anonymous allowed
    discard: bool = False
    spool: str | None = None
    amqp: AmqpRoute | None = None
    when_broker_down: str = "spool"  # amqp routes: "spool" (acknowledge on commit) or "reject" (503)
    webhooks: tuple[str, ...] | None = None  # target names in [webhooks]; each gets every message


@dataclass(frozen=True)
class LimitsConfig:
    max_body: int = 4 * 1024 * 1024
    max_line: int = 8192
    max_headers: int = 100
    max_header_bytes: int = 16384
    max_registers: int = 64
    max_register_name: int = 64
    max_inflight: int = 100_000  # per connection: accepted but not yet safe; above it reading pauses
    # Bytes read and not yet answered, plus answers the peer has not yet read:
    # above either budget the hub stops reading from the producers that fill it.
    max_connection_bytes: int = 8 * 1024 * 1024  # per connection
    max_inflight_bytes: int = 256 * 1024 * 1024  # hub-wide
    max_connections: int = 10_000  # per ingress; above it new connections are refused
    idle_timeout: int = 300  # seconds without a byte from a producer that owes nothing: close
    head_timeout: int = 30  # seconds from a request head's first byte to its end (a compact line)
    body_timeout: int = 60  # seconds a request body may go without growing
    # Uncached password checks (scrypt): threads of their own, checks queued or
    # running per peer address and hub-wide, and wrong passwords remembered.
    password_threads: int = 2
    password_checks_per_peer: int = 2
    password_checks: int = 64
    password_failures: int = 4096


@dataclass(frozen=True)
class Config:
    path: str
    listen: Listen = field(default_factory=Listen)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    users: Mapping[str, User] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    amqp: AmqpConfig | None = None  # None: no [amqp] section
    webhooks: Mapping[str, WebhookTarget] = field(default_factory=dict)  # [webhooks.NAME] by NAME
    subscriptions: tuple[SubscriptionConfig, ...] = ()  # [[subscriptions]]: GET paths that push
    status: StatusConfig = field(default_factory=StatusConfig)  # [status]: the admin page's demo


def spool_names(config: Config) -> tuple[str, ...]:
    """Every spool name the routes of ``config`` may write, sorted."""
    names = {rc.spool for rc in config.routes if rc.spool is not None}
    names.update(amqp_spool_name(rc.name) for rc in config.routes if rc.amqp is not None)
    names.update(target.spool_name for target in config.webhooks.values())
    return tuple(sorted(names))


# --- loading and validation -------------------------------------------------
# Each section's checker records every problem it finds and still returns a
# usable value, so one bad section does not hide the problems of the next.


def load(path: str) -> Config:
    """Read and validate the TOML file at ``path``; raise ``ConfigError`` listing every problem."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: (file): {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: (file): not UTF-8 ({e})"]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: (file): {e}"]) from e

    err = _Errors(path)
    folder = conf_folder(path)
    top = ("listen", "spool", "limits", "users", "routes", "amqp", "webhooks", "subscriptions", "status")
    _check_keys(doc, top, "", err)
    listen = _load_listen(_table(doc, "listen", err), folder, err)
    spool = _load_spool(_table(doc, "spool", err), folder, err)
    limits = _load_limits(_table(doc, "limits", err), err)
    users_table = _table(doc, "users", err)
    users = _load_users(users_table, err)
    amqp = None
    if "amqp" in doc:
        amqp = load_amqp(_table(doc, "amqp", err), err.add, lambda t, names, key: _check_keys(t, names, key, err))
    webhooks_table = _table(doc, "webhooks", err)
    webhooks = load_webhooks(webhooks_table, err.add, lambda t, names, key: _check_keys(t, names, key, err))
    context = {"amqp": amqp, "webhooks": set(webhooks_table)}
    routes = _load_routes(doc.get("routes", []), set(users_table), context, err)
    subscriptions = load_subscriptions(
        doc.get("subscriptions", []),
        routes,
        set(users_table),
        amqp,
        err.add,
        lambda t, names, key: _check_keys(t, names, key, err),
        _template_problems,
    )
    status = load_status(
        _table(doc, "status", err),
        routes,
        subscriptions,
        err.add,
        lambda t, names, key: _check_keys(t, names, key, err),
        compile_template,
    )
    if err.lines:
        raise ConfigError(err.lines)
    return Config(
        path, listen, spool, MappingProxyType(users), routes, limits, amqp, MappingProxyType(webhooks), subscriptions,
        status,
    )


class _Errors:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.lines.append(f"{self.path}: {key}: {problem}")


# --- generic checks -------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_TOML_TYPES = {
    str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"
}


def toml_key(parent: str, name: str) -> str:
    """The dotted TOML path of ``name`` under ``parent``, quoting names that are not bare keys."""
    part = name if _BARE_KEY.match(name) else json.dumps(name)
    return f"{parent}.{part}" if parent else part


def _type_name(value: object) -> str:
    return _TOML_TYPES.get(type(value), "date/time")


def _describe(value: object) -> str:
    """A scalar value as TOML spells it, anything else by its type."""
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (int, float, str)) else _type_name(value)


def _check_keys(table: dict, allowed: Iterable[str], key: str, err: _Errors) -> None:
    allowed = list(allowed)
    for name in table:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            err.add(toml_key(key, name), f"unknown key{hint}")


def _table(doc: dict, name: str, err: _Errors) -> dict:
    """``doc[name]`` if it is a table, {} if absent or (reported) anything else."""
    value = doc.get(name, {})
    if isinstance(value, dict):
        return value
    err.add(name, f"must be a table, not {_type_name(value)}")
    return {}


def _string(value: object, key: str, err: _Errors) -> str | None:
    if isinstance(value, str) and value:
        return value
    problem = "must not be empty" if value == "" else f"must be a string, not {_type_name(value)}"
    err.add(key, problem)
    return None


_Check = Callable[[str, str], str | None]  # (item, its key) -> problem or None


def _strings(
    value: object,
    key: str,
    err: _Errors,
    check: _Check = lambda item, key: None,
    fold: Callable[[str], object] = lambda item: item,
) -> tuple[str, ...]:
    """The strings of an array that pass ``check``; others and repeats are reported by index."""
    if not isinstance(value, list):
        err.add(key, f"must be an array of strings, not {_type_name(value)}")
        return ()
    items: list[str] = []
    seen: dict[object, int] = {}
    for i, item in enumerate(value):
        problem: str | None
        if not isinstance(item, str):
            problem = f"must be a string, not {_type_name(item)}"
        else:
            problem = check(item, f"{key}[{i}]")
        if problem is None and fold(item) in seen:
            problem = f"{item!r} repeats {key}[{seen[fold(item)]}]"
        if problem is None:
            seen[fold(item)] = i
            items.append(item)
        else:
            err.add(f"{key}[{i}]", problem)
    return tuple(items)


def _positive_int(value: object, key: str, err: _Errors) -> int | None:
    if type(value) is int and value > 0:
        return value
    err.add(key, f"must be a positive integer, not {_describe(value)}")
    return None


# --- [listen], [spool], [limits] ------------------------------------------------

# serverFromString is the public parser, and building an endpoint opens no
# socket (listen() does), so this checks exactly what the tap will later do
# with the real reactor -- endpoint plugins' arguments and "ssl:" key files
# included -- without binding anything.  The private _parseServer would skip
# plugins' checks.  Plugins may raise any exception type, hence the broad except.
_NO_REACTOR = object()


def _load_listen(table: dict, folder: str, err: _Errors) -> Listen:
    first_use: dict[str, str] = {}

    def check(written: str, key: str) -> str | None:
        # Checked as it will be used, so a missing key file is named where it was looked for.
        description = resolve_endpoint(written, folder)
        try:
            serverFromString(_NO_REACTOR, description)
        except Exception as e:
            return f"not a Twisted server endpoint description: {e}"
        if description in first_use:
            return f"same endpoint as {first_use[description]}"
        first_use[description] = key
        return None

    names = ("http", "compact", "admin")
    _check_keys(table, (*names, "backlog"), "listen", err)
    values: dict[str, Any] = {
        n: tuple(resolve_endpoint(d, folder) for d in _strings(table[n], f"listen.{n}", err, check))
        for n in names
        if n in table
    }
    if "backlog" in table:
        values["backlog"] = _positive_int(table["backlog"], "listen.backlog", err)
    return Listen(**{k: v for k, v in values.items() if v is not None})


_SYNCHRONOUS = ("full", "normal")


def _load_spool(table: dict, folder: str, err: _Errors) -> SpoolConfig:
    _check_keys(table, ("path", "synchronous", "max_bytes", "read_bytes", "max_queue_bytes"), "spool", err)
    values: dict = {}
    for name in ("max_bytes", "read_bytes", "max_queue_bytes"):
        if name in table:
            values[name] = _positive_int(table[name], f"spool.{name}", err)
    if "path" in table:
        values["path"] = _string(table["path"], "spool.path", err)
    if "synchronous" in table:
        mode = table["synchronous"]
        if mode in _SYNCHRONOUS:
            values["synchronous"] = mode
        else:
            err.add("spool.synchronous", f'must be "full" or "normal", not {_describe(mode)}')
    spool = SpoolConfig(**{k: v for k, v in values.items() if v is not None})
    return replace(spool, path=resolve_path(spool.path, folder))  # the default too


def _load_limits(table: dict, err: _Errors) -> LimitsConfig:
    names = [f.name for f in fields(LimitsConfig)]
    _check_keys(table, names, "limits", err)
    values = {n: _positive_int(table[n], f"limits.{n}", err) for n in names if n in table}
    limits = LimitsConfig(**{k: v for k, v in values.items() if v is not None})
    if limits.max_inflight_bytes < limits.max_connection_bytes:
        # One connection may fill its own budget; a smaller hub-wide one would
        # make max_connection_bytes a lie.
        err.add(
            "limits.max_inflight_bytes",
            f"must be at least limits.max_connection_bytes ({limits.max_connection_bytes}),"
            f" not {limits.max_inflight_bytes}",
        )
    return limits


# --- [users] ----------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")


def user_name_problem(name: str) -> str | None:
    if name == "" or ":" in name or not name.isprintable():
        # Basic auth sends "name:password", so a colon would be ambiguous.
        return "a user name must be non-empty, printable and without ':'"
    return None


def _load_users(table: dict, err: _Errors) -> dict[str, User]:
    users: dict[str, User] = {}
    token_owner: dict[bytes, str] = {}
    for name in table:
        key = toml_key("users", name)
        entry = table[name]
        if not isinstance(entry, dict):
            err.add(key, f"must be a table, not {_type_name(entry)}")
            continue
        _check_keys(entry, ("token_sha256", "password"), key, err)
        if problem := user_name_problem(name):
            err.add(key, problem)
        if not entry.keys() & {"token_sha256", "password"}:
            err.add(key, "needs token_sha256 (for Bearer), password (for Basic), or both")
        token = password = None
        if "token_sha256" in entry:
            token = _token_sha256(entry["token_sha256"], f"{key}.token_sha256", err)
            if token is not None and token in token_owner:
                err.add(f"{key}.token_sha256", f"same token as {token_owner[token]}.token_sha256")
            elif token is not None:
                token_owner[token] = key
        if "password" in entry:
            password = _password(entry["password"], f"{key}.password", err)
        users[name] = User(name, token, password)
    return users


def _token_sha256(value: object, key: str, err: _Errors) -> bytes | None:
    if isinstance(value, str) and _HEX64.match(value):
        return bytes.fromhex(value)
    err.add(key, "must be 64 hex digits, the SHA-256 of the token (see msghub-passwd --token)")
    return None


def _password(value: object, key: str, err: _Errors) -> str | None:
    try:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_type_name(value)}")
        parse_password_hash(value)
    except ValueError as e:
        err.add(key, f"not a msghub-passwd hash: {e}")
        return None
    return value


# --- [[routes]] ---------------------------------------------------------------------

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_CAPTURE_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# RFC 3986 pchar: unreserved / pct-encoded / sub-delims / ":" / "@"
_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 token, for methods
_SPOOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def _discard(value: object, context: dict) -> tuple[object, str | None]:
    if isinstance(value, bool):
        return (True if value else None), None  # discard = false chooses nothing
    return None, f"must be true or false, not {_describe(value)}"


def _spool_name(value: object, context: dict) -> tuple[object, str | None]:
    if isinstance(value, str) and _SPOOL_NAME.match(value):
        return value, None
    return None, "must be a spool name: letters, digits, '_', '.', '-', not starting with '_.-'"


def _amqp(value: object, context: dict) -> tuple[object, str | None]:
    return check_route_amqp(value, context["captures"], context["amqp"])


def _webhooks(value: object, context: dict) -> tuple[object, str | None]:
    return check_route_webhooks(value, context["webhooks"])


# Destination key -> (check(value, context) returning (value or None if not
# chosen, problem), example).  Each key is also the RouteConfig field it fills,
# so a new destination is one entry here plus one field there.  ``context``
# holds the route's capture names, the [amqp] section and the declared
# [webhooks] target names.
_DESTINATIONS: dict[str, tuple[Callable[[object, dict], tuple[object, str | None]], str]] = {
    "discard": (_discard, "discard = true"),
    "spool": (_spool_name, 'spool = "NAME"'),
    "amqp": (_amqp, 'amqp = {exchange = "X", routing_key = "K"}'),
    "webhooks": (_webhooks, 'webhooks = ["TARGET"]'),
}
_ROUTE_KEYS = ("name", "match", "methods", "users", "when_broker_down", *_DESTINATIONS)


def _load_routes(value: object, user_names: set[str], context: dict, err: _Errors) -> tuple[RouteConfig, ...]:
    if not isinstance(value, list):
        err.add("routes", f"must be an array of tables ([[routes]]), not {_type_name(value)}")
        return ()
    routes: list[RouteConfig] = []
    name_owner: dict[str, str] = {}
    for i, entry in enumerate(value):
        key = f"routes[{i}]"
        if not isinstance(entry, dict):
            err.add(key, f"must be a table ([[routes]]), not {_type_name(entry)}")
            continue
        route = _load_route(entry, key, user_names, context, err)
        if route is not None and route.name in name_owner:
            hint = "" if "name" in entry else "; give each a distinct name"
            err.add(f"{key}.name", f"{route.name!r} is taken by {name_owner[route.name]}{hint}")
        elif route is not None:
            name_owner[route.name] = key
            routes.append(route)
    return tuple(routes)


def _load_route(entry: dict, key: str, user_names: set[str], context: dict, err: _Errors) -> RouteConfig | None:
    before = len(err.lines)
    _check_keys(entry, _ROUTE_KEYS, key, err)
    match = None
    if "match" not in entry:
        err.add(f"{key}.match", 'required: a path template such as "/quotes/{symbol}"')
    elif match := _string(entry["match"], f"{key}.match", err):
        for problem in _template_problems(match):
            err.add(f"{key}.match", problem)
    name = _string(entry["name"], f"{key}.name", err) if "name" in entry else match
    methods = _strings(entry.get("methods", ["POST"]), f"{key}.methods", err, _method, str.upper)
    if entry.get("methods") == []:
        err.add(f"{key}.methods", "must list at least one method")
    users = None
    if "users" in entry:

        def known(user: str, _: str) -> str | None:
            return None if user in user_names else f"no user {user!r} in [users]"

        users = _strings(entry["users"], f"{key}.users", err, known)
        if entry["users"] == []:
            err.add(f"{key}.users", "is empty, so no one may use the route; omit it for anonymous")
    captures = set(_CAPTURE_NAME.findall(match or ""))
    destination = _route_destination(entry, key, {**context, "captures": captures}, err)
    when_broker_down = entry.get("when_broker_down", "spool")
    if when_broker_down not in WHEN_BROKER_DOWN:
        err.add(f"{key}.when_broker_down", f'must be "spool" or "reject", not {_describe(when_broker_down)}')
    elif "when_broker_down" in entry and "amqp" not in entry:
        err.add(f"{key}.when_broker_down", "only applies to amqp routes")
    if len(err.lines) > before or name is None or match is None:  # each None came with an error
        return None
    methods_bytes = tuple(m.upper().encode("ascii") for m in methods)
    return RouteConfig(
        name=name,
        match=match,
        methods=methods_bytes,
        users=users,
        when_broker_down=when_broker_down,
        **destination,
    )


def _method(method: str, _: str) -> str | None:
    return None if _TOKEN.match(method) else f"{method!r} is not an HTTP method token"


def _template_problems(match: str) -> list[str]:
    if not match.startswith("/"):
        return ['must start with "/"']
    problems: list[str] = []
    captures: set[str] = set()
    segments = match[1:].split("/")
    for i, segment in enumerate(segments):
        if capture := _CAPTURE.match(segment):
            if capture.group(1) in captures:
                problems.append(f"capture {segment} appears twice")
            captures.add(capture.group(1))
        elif "{" in segment or "}" in segment:
            problems.append(f"segment {segment!r}: a capture is a whole segment {{identifier}}")
        elif segment == "" and i < len(segments) - 1:
            problems.append('empty path segment ("//")')
        elif not _LITERAL.match(segment):
            problems.append(f"segment {segment!r} has characters not allowed in a path (use %XX)")
    return problems


def _route_destination(entry: dict, key: str, context: dict, err: _Errors) -> dict[str, Any]:
    # Any: the checked value of whichever of RouteConfig's destination fields was chosen.
    chosen: dict[str, Any] = {}
    invalid = False
    for name, (check, _) in _DESTINATIONS.items():
        if name in entry:
            value, problem = check(entry[name], context)
            if problem:
                err.add(f"{key}.{name}", problem)
                invalid = True
            elif value is not None:
                chosen[name] = value
    if len(chosen) > 1:
        err.add(key, f"more than one destination ({', '.join(chosen)}); set exactly one")
    elif not chosen and not invalid:
        examples = ", ".join(example for _, example in _DESTINATIONS.values())
        err.add(key, f"no destination; set exactly one of: {examples}")
    return chosen
