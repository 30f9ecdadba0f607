"""[webhooks.NAME] and a route's ``webhooks = [...]``: values, defaults, one exact line per problem."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest

from msghub.config import ConfigError, RouteConfig, load
from msghub.config_webhooks import (
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    RETRY_ON_DEFAULT,
    WebhookTarget,
    parse_secret,
)

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "msghub.toml"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROUTE = '[[routes]]\nmatch = "/orders/{kind}"\nwebhooks = ["orders"]\n'
TARGET = '[webhooks.orders]\nurl = "http://127.0.0.1:9000/in"\n'

try:
    import OpenSSL  # noqa: F401

    HAVE_TLS = True
except ImportError:
    HAVE_TLS = False


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return load(str(path))


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    prefix = f"{tmp_path / 'hub.toml'}: "
    assert all(line.startswith(prefix) for line in info.value.errors)
    return [line[len(prefix):] for line in info.value.errors]


# -- values and defaults -------------------------------------------------------------------


def test_every_key_is_parsed(tmp_path):
    config = load_text(tmp_path, (
        "[webhooks.orders]\n"
        'url = "http://127.0.0.1:9000/in?src=hub"\n'
        f'secret = "{SECRET}"\n'
        "timeout = 2.5\n"
        "retry = [1, 60.5]\n"
        "concurrency = 4\n"
        "ordered = false\n"
        'headers = {X-Source = "msghub", Authorization = "Bearer abc"}\n'
    ) + ROUTE)
    target = config.webhooks["orders"]
    assert target == WebhookTarget(
        name="orders",
        url="http://127.0.0.1:9000/in?src=hub",
        scheme="http",
        host="127.0.0.1",
        port=9000,
        path=b"/in?src=hub",
        secrets=(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),),
        timeout=2.5,
        retry=(1.0, 60.5),
        concurrency=4,
        ordered=False,
        headers=((b"X-Source", b"msghub"), (b"Authorization", b"Bearer abc")),
    )
    assert target.spool_name == "webhook:orders"
    assert config.routes == (RouteConfig(name="/orders/{kind}", match="/orders/{kind}", webhooks=("orders",)),)
    with pytest.raises(AttributeError):
        target.url = "x"  # type: ignore[misc]


def test_defaults(tmp_path):
    target = load_text(tmp_path, '[webhooks.orders]\nurl = "https://hooks.example"\n' if HAVE_TLS else TARGET)
    target = target.webhooks["orders"]
    assert (target.timeout, target.retry, target.concurrency, target.ordered) == (
        DEFAULT_TIMEOUT, DEFAULT_RETRY, DEFAULT_CONCURRENCY, False)
    assert target.secrets == () and target.headers == ()
    if HAVE_TLS:
        assert (target.scheme, target.port, target.path) == ("https", 443, b"/")


def test_retry_on_defaults_to_every_non_2xx_but_410_and_takes_statuses_and_classes(tmp_path):
    default = load_text(tmp_path, TARGET).webhooks["orders"]
    assert default.retry_on == RETRY_ON_DEFAULT == ((300, 409), (411, 999))
    assert load_text(tmp_path, TARGET + 'retry_on = "non-2xx"\n').webhooks["orders"].retry_on == RETRY_ON_DEFAULT
    target = load_text(tmp_path, TARGET + 'retry_on = ["5xx", 408, 429]\n').webhooks["orders"]
    assert target.retry_on == ((500, 599), (408, 408), (429, 429))


def test_rate_and_disable_after(tmp_path):
    target = load_text(tmp_path, TARGET + "rate = 50\ndisable_after = 259200\n").webhooks["orders"]
    assert (target.rate, target.disable_after) == (50.0, 259200.0)
    default = load_text(tmp_path, TARGET).webhooks["orders"]
    assert (default.rate, default.disable_after) == (None, 0.0)  # no limit, never disabled for failing
    assert load_text(tmp_path, TARGET + "disable_after = 0\n").webhooks["orders"].disable_after == 0.0


def test_the_default_schedule_spans_about_a_day():
    assert len(DEFAULT_RETRY) + 1 == 8 and 24 * 3600 < sum(DEFAULT_RETRY) < 30 * 3600


def test_the_secret_is_not_in_the_repr(tmp_path):
    target = load_text(tmp_path, TARGET + f'secret = "{SECRET}"\n').webhooks["orders"]
    assert "MfKQ" not in repr(target) and str(parse_secret(SECRET)) not in repr(target)


def test_an_array_of_secrets_is_for_rotation(tmp_path):
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    target = load_text(tmp_path, TARGET + f'secret = ["{SECRET}", "{other}"]\n').webhooks["orders"]
    assert target.secrets == (parse_secret(SECRET), b"k" * 32)


def test_unpadded_base64_secrets_are_accepted():
    key = b"0123456789abcdefghijklmnop"  # 26 bytes: base64 needs padding
    text = base64.b64encode(key).decode().rstrip("=")
    assert parse_secret("whsec_" + text) == key


def test_ordered_implies_one_in_flight(tmp_path):
    target = load_text(tmp_path, TARGET + "ordered = true\n").webhooks["orders"]
    assert (target.ordered, target.concurrency) == (True, 1)
    target = load_text(tmp_path, TARGET + "ordered = true\nconcurrency = 1\n").webhooks["orders"]
    assert target.concurrency == 1


def test_an_empty_retry_means_one_attempt(tmp_path):
    assert load_text(tmp_path, TARGET + "retry = []\n").webhooks["orders"].retry == ()


def test_a_route_may_fan_out_to_several_targets(tmp_path):
    text = TARGET + '[webhooks.audit]\nurl = "http://127.0.0.1:9001/"\n'
    text += '[[routes]]\nmatch = "/o"\nwebhooks = ["orders", "audit"]\n'
    assert load_text(tmp_path, text).routes[0].webhooks == ("orders", "audit")


def test_unrouted_targets_are_allowed(tmp_path):
    assert set(load_text(tmp_path, TARGET).webhooks) == {"orders"}


# -- one exact line per problem ------------------------------------------------------------

W = "[webhooks.orders]\n"
ERRORS = [
    ("webhooks = 1\n", "webhooks: must be a table, not integer"),
    ("[webhooks]\norders = 1\n", "webhooks.orders: must be a table ([webhooks.NAME])"),
    ('[webhooks."_x"]\nurl = "http://a/"\n',
     "webhooks._x: a target name is letters, digits, '_', '.', '-', not starting with '_.-'"),
    (W + 'url = "http://a/"\nurls = 1\n', "webhooks.orders.urls: unknown key (did you mean 'url'?)"),
    (W, "webhooks.orders.url: required: an http:// or https:// URL"),
    (W + 'url = "ftp://a/"\n', 'webhooks.orders.url: must start with "http://" or "https://"'),
    (W + 'url = "127.0.0.1:9000"\n', 'webhooks.orders.url: must start with "http://" or "https://"'),
    (W + 'url = "http:///in"\n', "webhooks.orders.url: has no host"),
    (W + 'url = "http://a:b@h/"\n',
     'webhooks.orders.url: must not carry credentials; send them with headers = {Authorization = "..."}'),
    (W + 'url = "http://h/#x"\n', "webhooks.orders.url: must not have a #fragment"),
    (W + 'url = "http://h:99999/"\n', "webhooks.orders.url: bad port: Port out of range 0-65535"),
    (W + 'url = "http://h/a b"\n', "webhooks.orders.url: must be ASCII without spaces (percent-encode the rest)"),
    (W + 'url = "http://h/\u00e9"\n', "webhooks.orders.url: must be ASCII without spaces (percent-encode the rest)"),
    (TARGET + 'secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n',
     'webhooks.orders.secret: must start with "whsec_" followed by base64'),
    (TARGET + 'secret = "whsec_not base64!"\n', 'webhooks.orders.secret: must be "whsec_" followed by base64'),
    (TARGET + 'secret = "whsec_c2hvcnQ="\n', "webhooks.orders.secret: must decode to 24 to 64 bytes, not 5"),
    (TARGET + "secret = 5\n", 'webhooks.orders.secret: must be a string "whsec_..." (or an array of them)'),
    (TARGET + "secret = []\n", "webhooks.orders.secret: must not be an empty array; omit it to send unsigned"),
    (TARGET + f'secret = ["{SECRET}", "x"]\n',
     'webhooks.orders.secret[1]: must start with "whsec_" followed by base64'),
    (TARGET + "timeout = 0\n", "webhooks.orders.timeout: must be a positive number of seconds"),
    (TARGET + "timeout = -1.5\n", "webhooks.orders.timeout: must be a positive number of seconds"),
    (TARGET + 'timeout = "15"\n', "webhooks.orders.timeout: must be a positive number of seconds"),
    (TARGET + "timeout = true\n", "webhooks.orders.timeout: must be a positive number of seconds"),
    (TARGET + "timeout = inf\n", "webhooks.orders.timeout: must be a positive number of seconds"),
    (TARGET + "retry = 5\n",
     "webhooks.orders.retry: must be an array of positive numbers of seconds (may be empty: no retries)"),
    (TARGET + "retry = [5, 0]\n",
     "webhooks.orders.retry: must be an array of positive numbers of seconds (may be empty: no retries)"),
    (TARGET + "retry = [-5]\n",
     "webhooks.orders.retry: must be an array of positive numbers of seconds (may be empty: no retries)"),
    (TARGET + "concurrency = 0\n", "webhooks.orders.concurrency: must be a positive integer"),
    (TARGET + "concurrency = 2.5\n", "webhooks.orders.concurrency: must be a positive integer"),
    (TARGET + "ordered = true\nconcurrency = 4\n",
     "webhooks.orders.concurrency: must be 1 (or omitted) when ordered = true"),
    (TARGET + 'ordered = "yes"\n', "webhooks.orders.ordered: must be true or false"),
    (TARGET + "retry_on = 5\n", 'webhooks.orders.retry_on: must be "non-2xx" or an array of statuses and classes, '
     'e.g. ["5xx", 408, 429]'),
    (TARGET + 'retry_on = ["5xx", 410]\n', 'webhooks.orders.retry_on: 410: must be "non-2xx" or an array of '
     'statuses and classes, e.g. ["5xx", 408, 429] (not 2xx or 410)'),
    (TARGET + 'retry_on = ["2xx"]\n', "webhooks.orders.retry_on: '2xx': must be \"non-2xx\" or an array of "
     'statuses and classes, e.g. ["5xx", 408, 429] (not 2xx or 410)'),
    (TARGET + "rate = 0\n", "webhooks.orders.rate: must be a positive number of attempts per second"),
    (TARGET + "disable_after = -1\n", "webhooks.orders.disable_after: must be a number of seconds (0: never disable)"),
    (TARGET + 'disable_after = "3d"\n',
     "webhooks.orders.disable_after: must be a number of seconds (0: never disable)"),
    (TARGET + 'headers = "X-A: b"\n',
     'webhooks.orders.headers: must be a table of strings, e.g. {X-Source = "msghub"}'),
    (TARGET + 'headers = {"X A" = "b"}\n', 'webhooks.orders.headers."X A": is not an HTTP field name'),
    (TARGET + 'headers = {Content-Type = "text/plain"}\n',
     "webhooks.orders.headers.Content-Type: is set by msghub itself and cannot be configured"),
    (TARGET + 'headers = {Webhook-Signature = "v1,x"}\n',
     "webhooks.orders.headers.Webhook-Signature: is set by msghub itself and cannot be configured"),
    (TARGET + "headers = {X-A = 1}\n",
     "webhooks.orders.headers.X-A: must be a string of visible ASCII characters"),
    (TARGET + 'headers = {X-A = "a\\r\\nX-Evil: 1"}\n',
     "webhooks.orders.headers.X-A: must be a string of visible ASCII characters"),
    # routes
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = ["billing"]\n',
     "routes[0].webhooks: no target 'billing' in [webhooks] (defined: orders)"),
    ('[[routes]]\nmatch = "/o"\nwebhooks = ["orders"]\n',
     "routes[0].webhooks: no target 'orders' in [webhooks] (defined: none)"),
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = []\n',
     'routes[0].webhooks: must be a non-empty array of target names, e.g. ["orders"]'),
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = "orders"\n',
     'routes[0].webhooks: must be a non-empty array of target names, e.g. ["orders"]'),
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = ["orders", "orders"]\n',
     "routes[0].webhooks: 'orders' is listed twice"),
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = ["orders"]\nspool = "x"\n',
     "routes[0]: more than one destination (spool, webhooks); set exactly one"),
    (TARGET + '[[routes]]\nmatch = "/o"\nwebhooks = ["orders"]\nwhen_broker_down = "reject"\n',
     "routes[0].when_broker_down: only applies to amqp routes"),
]


IDS = [f"{i}-{line.split(':')[0]}" for i, (_, line) in enumerate(ERRORS)]


@pytest.mark.parametrize(("text", "line"), ERRORS, ids=IDS)
def test_each_problem_is_one_line_naming_key_and_problem(tmp_path, text, line):
    assert errors_of(tmp_path, text) == [line]


def test_a_route_naming_an_invalid_target_is_not_a_second_error(tmp_path):
    text = '[webhooks.orders]\nurl = "ftp://x/"\n' + ROUTE
    assert errors_of(tmp_path, text) == ['webhooks.orders.url: must start with "http://" or "https://"']


def test_every_problem_of_a_target_is_reported_together(tmp_path):
    text = '[webhooks.orders]\nurl = "ftp://x/"\nsecret = "x"\ntimeout = 0\nconcurrency = 0\n'
    assert [line.split(":")[0] for line in errors_of(tmp_path, text)] == [
        "webhooks.orders.url", "webhooks.orders.secret", "webhooks.orders.timeout", "webhooks.orders.concurrency",
    ]


def test_https_without_tls_support_is_a_config_error_not_a_failure_at_first_delivery(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenSSL", None)  # an install without pyOpenSSL: import fails
    assert errors_of(tmp_path, '[webhooks.orders]\nurl = "https://hooks.example/"\n') == [
        "webhooks.orders.url: https needs TLS support, which is not installed (pip install 'twisted[tls]')"
    ]


# -- the shipped file -----------------------------------------------------------------------


def test_shipped_conf_documents_every_webhook_key_and_the_route_destination():
    text = SHIPPED.read_text()
    for key in ("url", "secret", "timeout", "retry", "concurrency", "ordered", "headers", "retry_on", "rate",
                "disable_after"):
        assert re.search(rf"^#\s+{key}\b", text, re.M), key
    assert "[webhooks.orders]" in text and 'webhooks = ["orders"]' in text


def test_shipped_conf_webhook_example_loads_when_uncommented(tmp_path):
    example = re.compile(r"^# (\[\[?[a-z.]+\]\]?|[a-z_0-9]+ = .*)$")
    lines = [line[2:] if example.match(line) else line for line in SHIPPED.read_text().splitlines()]
    config = load_text(tmp_path, "\n".join(lines))
    target = config.webhooks["orders"]
    assert (target.url, target.timeout, target.retry, target.concurrency, target.ordered) == (
        "http://127.0.0.1:9000/in", 15.0, DEFAULT_RETRY, 8, False)
    assert (target.retry_on, target.rate, target.disable_after) == (RETRY_ON_DEFAULT, 50.0, 259200.0)
    assert target.secrets == (parse_secret(SECRET),) and target.headers == ((b"X-Source", b"msghub"),)
    [route] = [r for r in config.routes if r.webhooks]
    assert (route.name, route.match, route.webhooks) == ("orders", "/orders/{kind}", ("orders",))
