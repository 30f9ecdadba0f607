"""[[subscriptions]]: sources, defaults, and one exact line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from msghub.config import ConfigError, load
from msghub.config_subscriptions import AmqpSource, SubscriptionConfig

BASE = """
[users.viewer]
token_sha256 = "%s"
[amqp]
[[amqp.exchanges]]
name = "quotes"
[[routes]]
name = "orders"
match = "/orders/{kind}"
discard = true
""" % ("ab" * 32)


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "hub.toml"
    path.write_text(BASE + text)
    return load(str(path))


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    prefix = f"{tmp_path / 'hub.toml'}: "
    assert all(line.startswith(prefix) for line in info.value.errors)
    return [line[len(prefix):] for line in info.value.errors]


def test_the_three_sources_with_defaults(tmp_path):
    config = load_text(tmp_path, """
[[subscriptions]]
match = "/subscribe/quotes/{symbol}"
amqp = {exchange = "quotes", binding = "opra.{symbol}"}
users = ["viewer"]
[[subscriptions]]
name = "log"
match = "/subscribe/log"
amqp = {stream = "quotes.log", prefetch = 50}
[[subscriptions]]
match = "/tap/orders/{kind}"
route = "/orders/{kind}"
cors_origins = ["*"]
buffer_bytes = 4096
overflow = "close"
heartbeat = 5
poll_timeout = 3
history_bytes = 0
""")
    assert config.subscriptions == (
        SubscriptionConfig(
            name="/subscribe/quotes/{symbol}",
            match="/subscribe/quotes/{symbol}",
            amqp=AmqpSource(exchange="quotes", binding="opra.{symbol}"),
            users=("viewer",),
        ),
        SubscriptionConfig(name="log", match="/subscribe/log", amqp=AmqpSource(stream="quotes.log", prefetch=50)),
        SubscriptionConfig(
            name="/tap/orders/{kind}", match="/tap/orders/{kind}", route="orders", cors_origins=("*",),
            buffer_bytes=4096, overflow="close", heartbeat=5, poll_timeout=3, history_bytes=0,
        ),
    )
    assert SubscriptionConfig("a", "/a").heartbeat == 15


ERRORS = [
    ('match = "/t"\nroute = "nope"\n',
     "subscriptions[0].route: no route named or matching 'nope' (routes: 'orders')"),
    ('match = "/t"\n', 'subscriptions[0]: needs exactly one source: route = "ROUTE" or amqp = '
     '{exchange = "X", binding = "K"} or amqp = {stream = "S"}'),
    ('match = "/t/{x}"\nroute = "orders"\n',
     "subscriptions[0].route: the match captures {x}, which route 'orders' does not capture"),
    ('match = "/t/{s}"\namqp = {exchange = "quotes", binding = "a.{z}"}\n',
     "subscriptions[0].amqp.binding: uses {z}, which the match template does not capture"),
    ('match = "/t"\namqp = {exchange = "nope"}\n',
     "subscriptions[0].amqp.exchange: unknown exchange 'nope': declare it in [[amqp.exchanges]]"),
    ('match = "/t/{s}"\namqp = {stream = "log"}\n',
     "subscriptions[0].amqp: a stream source cannot filter by path captures: use a match without {captures}"),
    ('match = "/t"\namqp = {stream = "log", exchange = "quotes"}\n',
     "subscriptions[0].amqp: a stream source takes no exchange or binding (bind the stream queue in RabbitMQ)"),
    ('match = "/t"\nroute = "orders"\noverflow = "drop"\n',
     "subscriptions[0].overflow: must be \"gap\" or \"close\", not 'drop'"),
    ('match = "/t"\nroute = "orders"\nbuffer_bytes = 0\n',
     "subscriptions[0].buffer_bytes: must be a positive integer, not 0"),
    ('match = "/t"\nroute = "orders"\nusers = ["ghost"]\n',
     "subscriptions[0].users[0]: no user 'ghost' in [users]"),
    ('match = "/t"\nroute = "orders"\ncors_origins = ["https://a.example/x"]\n',
     "subscriptions[0].cors_origins[0]: must be \"*\" or scheme://host[:port] with no path, "
     "not 'https://a.example/x'"),
    ('match = "/t"\namqp = {stream = "log"}\nhistory_bytes = 10\n',
     "subscriptions[0].history_bytes: only applies to route taps (streams keep their own history)"),
    ('match = "/t"\nroute = "orders"\ncolour = 1\n', "subscriptions[0].colour: unknown key"),
    ('match = "t"\nroute = "orders"\n', 'subscriptions[0].match: must start with "/"'),
]


@pytest.mark.parametrize(("text", "line"), ERRORS, ids=[line.split(":")[1].strip()[:30] for _, line in ERRORS])
def test_each_problem_is_one_line_naming_key_and_problem(tmp_path, text, line):
    assert errors_of(tmp_path, "[[subscriptions]]\n" + text) == [line]


def test_two_subscriptions_on_one_path_are_refused(tmp_path):
    text = '[[subscriptions]]\nmatch = "/t"\nroute = "orders"\n' * 2
    assert errors_of(tmp_path, text) == ["subscriptions[1].match: same path as subscriptions[0]"]


def test_amqp_sources_need_an_amqp_section(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text('[[subscriptions]]\nmatch = "/t"\namqp = {stream = "log"}\n')
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.errors == [f"{path}: subscriptions[0].amqp: needs an [amqp] section"]
