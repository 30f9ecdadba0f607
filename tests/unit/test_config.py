"""msghub.config.load: the shipped file, defaults, and one exact line per problem."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from msghub.auth import hash_password
from msghub.config_subscriptions import SubscriptionConfig
from msghub.config import (
    Config,
    ConfigError,
    LimitsConfig,
    Listen,
    RouteConfig,
    SpoolConfig,
    User,
    load,
)

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "msghub.toml"
TOKEN_HEX = "ab" * 32
PASSWORD = hash_password("secret", n=16)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in info.value.errors)
    assert str(info.value) == "\n".join(info.value.errors)
    return [line[len(prefix):] for line in info.value.errors]


# --- the shipped file ------------------------------------------------------------


def test_shipped_conf_loads_with_loopback_listeners_and_anonymous_routes():
    config = load(str(SHIPPED))
    assert config.listen == Listen(
        http=("tcp:8080:interface=127.0.0.1",),
        compact=("tcp:8081:interface=127.0.0.1",),
        admin=("tcp:8082:interface=127.0.0.1",),
    )
    assert config.spool == SpoolConfig(path=str(SHIPPED.parent / "../var/msghub.db"), synchronous="full")
    assert dict(config.users) == {}
    assert config.routes == (
        RouteConfig(name="discard", match="/discard/{name}", methods=(b"POST",), discard=True),
        RouteConfig(name="held", match="/held/{name}", methods=(b"POST",), spool="held"),
        RouteConfig(name="visits", match="/visits/{page}", methods=(b"POST",), discard=True),
    )
    assert [(s.name, s.route) for s in config.subscriptions] == [("visits", "visits")]
    assert config.status.demo_events == "http://127.0.0.1:8080/tap/visits"
    assert config.limits == LimitsConfig()


def test_shipped_conf_commented_examples_load_when_uncommented(tmp_path):
    # Uncomment "# key = value" and "# [table]" lines, not the prose around them.
    example = re.compile(r"^# (\[\[?[a-z.]+\]\]?|[a-z_0-9]+ = .*)$")
    lines = [line[2:] if example.match(line) else line for line in SHIPPED.read_text().splitlines()]
    config = load(write(tmp_path, "\n".join(lines)))
    feed = config.users["feed"]
    assert feed.token_sha256 is not None and len(feed.token_sha256) == 32
    assert feed.password is not None and feed.password.startswith("scrypt$")
    assert config.routes[-1] == RouteConfig(
        name="quotes", match="/quotes/{symbol}", methods=(b"POST", b"PUT"), users=("feed",), spool="quotes"
    )
    assert [s.name for s in config.subscriptions][-3:] == ["held-tap", "/subscribe/quotes/{symbol}", "visits"]


def test_shipped_conf_mentions_every_key():
    text = SHIPPED.read_text()
    keys = [f.name for cls in (Listen, SpoolConfig, LimitsConfig) for f in dataclasses.fields(cls)]
    keys += ["token_sha256", "password", "name", "match", "methods", "users", "discard", "spool"]
    keys += [f.name for f in dataclasses.fields(SubscriptionConfig) if f.name not in ("amqp", "route")]
    keys += ["demo_post", "demo_events"]
    missing = [key for key in keys if not re.search(rf"^#?\s*{key}\b", text, re.M)]
    assert missing == []


# --- defaults ---------------------------------------------------------------------


def test_empty_file_gives_all_defaults(tmp_path):
    path = write(tmp_path, "")
    # The default spool path, like any relative one, is under the conf file's folder.
    assert load(path) == Config(path=path, spool=SpoolConfig(path=str(tmp_path / "var/msghub.db")))


def test_route_defaults_name_to_match_methods_to_post_and_allows_anonymous(tmp_path):
    config = load(write(tmp_path, '[[routes]]\nmatch = "/a/{x}"\ndiscard = true\n'))
    assert config.routes == (
        RouteConfig(name="/a/{x}", match="/a/{x}", methods=(b"POST",), users=None, discard=True),
    )


def test_methods_are_stored_upper_case_bytes(tmp_path):
    config = load(write(tmp_path, '[[routes]]\nmatch = "/a"\nmethods = ["put", "Patch"]\nspool = "s"\n'))
    assert config.routes[0].methods == (b"PUT", b"PATCH")


def test_partial_sections_keep_defaults_for_other_keys(tmp_path):
    config = load(write(tmp_path, '[listen]\nhttp = []\n[spool]\nsynchronous = "normal"\n'
                                  "[limits]\nmax_body = 10\n"))
    assert config.listen == Listen(http=())
    assert config.spool == SpoolConfig(path=str(tmp_path / "var/msghub.db"), synchronous="normal")
    assert config.limits == LimitsConfig(max_body=10)


def test_users_are_parsed_into_raw_token_digests_and_kept_hashes(tmp_path):
    config = load(write(tmp_path, f'[users.feed]\ntoken_sha256 = "{TOKEN_HEX.upper()}"\n'
                                  f'[users.ops]\npassword = "{PASSWORD}"\n'))
    assert dict(config.users) == {
        "feed": User(name="feed", token_sha256=bytes.fromhex(TOKEN_HEX)),
        "ops": User(name="ops", password=PASSWORD),
    }


def test_config_is_frozen_and_its_users_read_only(tmp_path):
    config = load(write(tmp_path, f'[users.feed]\ntoken_sha256 = "{TOKEN_HEX}"\n'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.users["x"] = config.users["feed"]  # type: ignore[index]


def test_endpoint_check_does_not_listen(tmp_path):
    sock = tmp_path / "http.sock"
    load(write(tmp_path, f'[listen]\nhttp = ["unix:{sock}"]\n'))
    assert not sock.exists()


# --- one exact line per problem --------------------------------------------------

ROUTE = '[[routes]]\nmatch = "/a"\ndiscard = true\n'

ERRORS = [
    # unknown keys, with a hint when one is close
    ("bogus = 1\n", "bogus: unknown key"),
    ("[listen]\nhtpp = []\n", "listen.htpp: unknown key (did you mean 'http'?)"),
    ("[limits]\nmax_bodies = 1\n", "limits.max_bodies: unknown key (did you mean 'max_body'?)"),
    (f'[users.feed]\ntoken_sha256 = "{TOKEN_HEX}"\ntoken = "x"\n', "users.feed.token: unknown key"),
    (ROUTE + "mehtods = []\n", "routes[0].mehtods: unknown key (did you mean 'methods'?)"),
    # wrong shapes
    ('listen = "tcp:80"\n', "listen: must be a table, not string"),
    ("[routes]\n", "routes: must be an array of tables ([[routes]]), not table"),
    ("routes = [1]\n", "routes[0]: must be a table ([[routes]]), not integer"),
    ("users = {feed = 1}\n", "users.feed: must be a table, not integer"),
    # [listen]
    ('[listen]\nhttp = "tcp:8080"\n', "listen.http: must be an array of strings, not string"),
    ("[listen]\nhttp = [8080]\n", "listen.http[0]: must be a string, not integer"),
    ('[listen]\nadmin = ["tcp:x"]\n',
     "listen.admin[0]: not a Twisted server endpoint description: "
     "invalid literal for int() with base 10: 'x'"),
    ('[listen]\nhttp = ["nope:80"]\n',
     "listen.http[0]: not a Twisted server endpoint description: Unknown endpoint type: 'nope'"),
    ('[listen]\nhttp = ["tcp:1"]\ncompact = ["tcp:2", "tcp:1"]\n',
     "listen.compact[1]: same endpoint as listen.http[0]"),
    ("[listen]\nbacklog = 0\n", "listen.backlog: must be a positive integer, not 0"),
    # [spool]
    ('[spool]\npath = ""\n', "spool.path: must not be empty"),
    ("[spool]\npath = 1\n", "spool.path: must be a string, not integer"),
    ('[spool]\nsynchronous = "off"\n', 'spool.synchronous: must be "full" or "normal", not "off"'),
    # [limits]
    ("[limits]\nmax_body = 0\n", "limits.max_body: must be a positive integer, not 0"),
    ("[limits]\nmax_line = -5\n", "limits.max_line: must be a positive integer, not -5"),
    ('[limits]\nmax_headers = "9"\n', 'limits.max_headers: must be a positive integer, not "9"'),
    ("[limits]\nmax_inflight = true\n", "limits.max_inflight: must be a positive integer, not true"),
    ("[limits]\nmax_registers = 1.5\n", "limits.max_registers: must be a positive integer, not 1.5"),
    ("[limits]\nmax_connection_bytes = 0\n", "limits.max_connection_bytes: must be a positive integer, not 0"),
    ("[limits]\nmax_inflight_bytes = -1\n", "limits.max_inflight_bytes: must be a positive integer, not -1"),
    (
        "[limits]\nmax_connection_bytes = 2048\nmax_inflight_bytes = 1024\n",
        "limits.max_inflight_bytes: must be at least limits.max_connection_bytes (2048), not 1024",
    ),
    # [users]
    ("[users.feed]\n", "users.feed: needs token_sha256 (for Bearer), password (for Basic), or both"),
    ('[users.feed]\ntoken_sha256 = "abc"\n',
     "users.feed.token_sha256: must be 64 hex digits, the SHA-256 of the token "
     "(see msghub-passwd --token)"),
    ('[users.feed]\npassword = "hunter2"\n',
     "users.feed.password: not a msghub-passwd hash: expected scrypt$N$R$P$SALT$KEY"),
    ("[users.feed]\npassword = 5\n",
     "users.feed.password: not a msghub-passwd hash: must be a string, not integer"),
    (f'[users."a:b"]\ntoken_sha256 = "{TOKEN_HEX}"\n',
     "users.\"a:b\": a user name must be non-empty, printable and without ':'"),
    (f'[users.a]\ntoken_sha256 = "{TOKEN_HEX}"\n[users.b]\ntoken_sha256 = "{TOKEN_HEX}"\n',
     "users.b.token_sha256: same token as users.a.token_sha256"),
    # [[routes]]
    ("[[routes]]\ndiscard = true\n",
     'routes[0].match: required: a path template such as "/quotes/{symbol}"'),
    ('[[routes]]\nmatch = "a/b"\ndiscard = true\n', 'routes[0].match: must start with "/"'),
    ('[[routes]]\nmatch = "/a/b{x}"\ndiscard = true\n',
     "routes[0].match: segment 'b{x}': a capture is a whole segment {identifier}"),
    ('[[routes]]\nmatch = "/a/{1x}"\ndiscard = true\n',
     "routes[0].match: segment '{1x}': a capture is a whole segment {identifier}"),
    ('[[routes]]\nmatch = "/{x}/{x}"\ndiscard = true\n', "routes[0].match: capture {x} appears twice"),
    ('[[routes]]\nmatch = "/a//b"\ndiscard = true\n', 'routes[0].match: empty path segment ("//")'),
    ('[[routes]]\nmatch = "/a b"\ndiscard = true\n',
     "routes[0].match: segment 'a b' has characters not allowed in a path (use %XX)"),
    ('[[routes]]\nname = ""\nmatch = "/a"\ndiscard = true\n', "routes[0].name: must not be empty"),
    (ROUTE + ROUTE, "routes[1].name: '/a' is taken by routes[0]; give each a distinct name"),
    ('[[routes]]\nname = "n"\nmatch = "/a"\ndiscard = true\n[[routes]]\nname = "n"\nmatch = "/b"\n'
     "discard = true\n", "routes[1].name: 'n' is taken by routes[0]"),
    (ROUTE + "methods = []\n", "routes[0].methods: must list at least one method"),
    (ROUTE + 'methods = "POST"\n', "routes[0].methods: must be an array of strings, not string"),
    (ROUTE + 'methods = ["GE T"]\n', "routes[0].methods[0]: 'GE T' is not an HTTP method token"),
    (ROUTE + 'methods = ["post", "POST"]\n', "routes[0].methods[1]: 'POST' repeats routes[0].methods[0]"),
    (ROUTE + "users = []\n", "routes[0].users: is empty, so no one may use the route; omit it for anonymous"),
    (ROUTE + 'users = ["ghost"]\n', "routes[0].users[0]: no user 'ghost' in [users]"),
    ('[[routes]]\nmatch = "/a"\n', 'routes[0]: no destination; set exactly one of: discard = true, spool = "NAME", amqp = {exchange = "X", routing_key = "K"}, webhooks = ["TARGET"]'),
    ('[[routes]]\nmatch = "/a"\ndiscard = false\n',
     'routes[0]: no destination; set exactly one of: discard = true, spool = "NAME", amqp = {exchange = "X", routing_key = "K"}, webhooks = ["TARGET"]'),
    (ROUTE + 'spool = "held"\n', "routes[0]: more than one destination (discard, spool); set exactly one"),
    ('[[routes]]\nmatch = "/a"\ndiscard = "yes"\n', 'routes[0].discard: must be true or false, not "yes"'),
    ('[[routes]]\nmatch = "/a"\nspool = "../x"\n',
     "routes[0].spool: must be a spool name: letters, digits, '_', '.', '-', not starting with '_.-'"),
]


@pytest.mark.parametrize(("text", "line"), ERRORS, ids=[line.split(":")[0] for _, line in ERRORS])
def test_each_problem_is_one_line_naming_key_and_problem(tmp_path, text, line):
    assert errors_of(tmp_path, text) == [line]


def test_all_problems_are_reported_together_in_file_order(tmp_path):
    text = (
        "bogus = 1\n"
        '[listen]\nhttp = ["tcp:x", 3]\n'
        "[limits]\nmax_body = 0\n"
        "[users.feed]\n"
        '[[routes]]\nmatch = "/{a}/{a}"\nusers = ["ghost"]\nspool = "held"\ndiscard = true\n'
        '[[routes]]\nmatch = "/ok"\n'
    )
    assert errors_of(tmp_path, text) == [
        "bogus: unknown key",
        "listen.http[0]: not a Twisted server endpoint description: "
        "invalid literal for int() with base 10: 'x'",
        "listen.http[1]: must be a string, not integer",
        "limits.max_body: must be a positive integer, not 0",
        "users.feed: needs token_sha256 (for Bearer), password (for Basic), or both",
        "routes[0].match: capture {a} appears twice",
        "routes[0].users[0]: no user 'ghost' in [users]",
        "routes[0]: more than one destination (discard, spool); set exactly one",
        'routes[1]: no destination; set exactly one of: discard = true, spool = "NAME", amqp = {exchange = "X", routing_key = "K"}, webhooks = ["TARGET"]',
    ]


def test_route_may_name_a_user_whose_own_entry_is_invalid_without_a_second_error(tmp_path):
    text = '[users.feed]\ntoken_sha256 = "abc"\n' + ROUTE + 'users = ["feed"]\n'
    assert [line.split(":")[0] for line in errors_of(tmp_path, text)] == ["users.feed.token_sha256"]


# --- the file itself ----------------------------------------------------------------


def test_missing_file_is_one_file_line(tmp_path):
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.errors == [f"{path}: (file): No such file or directory"]


def test_toml_syntax_error_is_one_file_line_with_position(tmp_path):
    assert errors_of(tmp_path, "[listen\n") == [
        "(file): Expected ']' at the end of a table declaration (at line 1, column 8)"
    ]


def test_non_utf8_file_is_one_file_line(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_bytes(b'[spool]\npath = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path))
    [line] = info.value.errors
    assert line.startswith(f"{path}: (file): not UTF-8")
