"""``[status]``: the demo's two URLs, checked against the routes and subscriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from msghub.config import ConfigError, load

BASE = """
[users.viewer]
token_sha256 = "%s"

[[routes]]
name = "visits"
match = "/visits/{page}"
discard = true

[[routes]]
name = "private"
match = "/private"
users = ["viewer"]
discard = true

[[subscriptions]]
match = "/tap/visits"
route = "visits"
cors_origins = ["*"]

[[subscriptions]]
match = "/tap/closed"
route = "visits"
""" % ("ab" * 32)


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "hub.toml"
    path.write_text(BASE + "[status]\n" + text)
    return load(str(path))


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    prefix = f"{tmp_path / 'hub.toml'}: "
    return [line[len(prefix):] for line in info.value.errors]


def test_the_demo_names_its_route_and_event(tmp_path):
    status = load_text(tmp_path, 'demo_post = "http://127.0.0.1:8080/visits/page"\n'
                                 'demo_events = "http://127.0.0.1:8080/tap/visits"\n').status
    assert (status.demo_route, status.demo_event) == ("visits", "visits")


def test_no_status_section_means_no_demo(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_text(BASE)
    assert load(str(path)).status.demo_post is None


@pytest.mark.parametrize("text, line", [
    ('demo_post = "http://h/nope"\ndemo_events = "http://h/tap/visits"',
     "status.demo_post: no route matches '/nope'"),
    ('demo_post = "http://h/private"\ndemo_events = "http://h/tap/visits"',
     "status.demo_post: route 'private' must accept anonymous POSTs for the page to send to it"),
    ('demo_post = "ftp://h/visits/x"\ndemo_events = "http://h/tap/visits"',
     "status.demo_post: must be an http:// or https:// URL, not 'ftp://h/visits/x'"),
    ('demo_post = "http://h/visits/x"\ndemo_events = "http://h/tap/closed"',
     "status.demo_events: subscription '/tap/closed' needs cors_origins for the page to read it"),
    ('demo_post = "http://h/visits/x"',
     "status: demo_post and demo_events go together (the page sends to one and reads the other)"),
    ('demo_post = "http://h/visits/x"\ndemo_events = "http://h/tap/visits"\ndemo = 1',
     "status.demo: unknown key (did you mean 'demo_post'?)"),
])
def test_each_problem_names_the_key(tmp_path, text, line):
    assert errors_of(tmp_path, text) == [line]
