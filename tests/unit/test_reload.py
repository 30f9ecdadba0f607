"""Hub.reload and ReloadService: users and routes change under open connections; the rest is named."""

import dataclasses
import hashlib

from msghub.compact import Ack, Error, ReplyReader
from msghub.config import Config, ConfigError, Listen, RouteConfig, User
from msghub.config_amqp import AmqpRoute
from msghub.ingress.compact import CompactIngress
from msghub.reload import ReloadService

from fakes import ROUTES, TOKEN, USERS, connect, make_hub

NEW_TOKEN = b"n3w-token"


def replies(transport) -> list:
    events = ReplyReader().feed(transport.value())
    transport.clear()
    return events


def config_like(hub, **changes) -> Config:
    return dataclasses.replace(hub.config, **changes)


def test_a_new_token_applies_to_open_connections_which_keep_their_registers():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"H:Authorization: Bearer " + TOKEN + b"\r\n>:feed\r\n+:/quotes/A 1\r\n1")
    hub.spool.commit_all()
    assert replies(t) == [Ack(1)]
    users = {"feed": User("feed", token_sha256=hashlib.sha256(NEW_TOKEN).digest())}
    assert hub.reload(config_like(hub, users=users)) == []
    # The register still holds the old token: refused now, on the same connection.
    p.dataReceived(b"<:feed\r\n+:/quotes/A 1\r\n2")
    assert replies(t) == [Error(2, 401, "bad credentials"), Ack(2)]
    p.dataReceived(b"H:Authorization: Bearer " + NEW_TOKEN + b"\r\n+:/quotes/A 1\r\n3")
    hub.spool.commit_all()
    assert replies(t) == [Ack(3)]
    assert t.connected


def test_routes_are_added_changed_and_removed_without_dropping_connections():
    hub = make_hub()
    p, t = connect(CompactIngress, hub)
    p.dataReceived(b"+:/open/a 1\r\n1")
    assert replies(t) == [Ack(1)]
    routes = (
        RouteConfig(name="open", match="/public/{name}", methods=(b"POST",), discard=True),  # moved
        RouteConfig(name="extra", match="/extra", discard=True),  # new
    )
    assert hub.reload(config_like(hub, routes=routes)) == []
    p.dataReceived(b"+:/open/a 1\r\n2+:/public/a 1\r\n3+:/extra 1\r\n4+:/quotes/A 1\r\n5")
    assert replies(t) == [Error(2, 404, "no route"), Error(5, 404, "no route"), Ack(5)]
    assert [r.name for r in hub.router.routes] == ["open", "extra"]


def test_an_unchanged_destination_keeps_its_sink():
    hub = make_hub()
    before = {r.name: r.sink for r in hub.router.routes}
    routes = tuple(dataclasses.replace(rc, methods=(b"POST", b"PUT")) for rc in ROUTES)
    hub.reload(config_like(hub, routes=routes))
    assert {r.name: r.sink for r in hub.router.routes} == before


def test_sections_that_need_a_restart_are_named_and_kept():
    hub = make_hub()
    listen = Listen(http=("tcp:1:interface=127.0.0.1",))
    amqp_route = RouteConfig(name="orders", match="/orders", amqp=AmqpRoute(exchange="", routing_key="q"))
    notes = hub.reload(config_like(hub, listen=listen, routes=(*ROUTES, amqp_route)))
    assert notes == [
        "listen: changed; the running value is kept until a restart",
        "routes: orders: a new or changed AMQP destination needs a restart",
    ]
    assert hub.config.listen == Listen()
    assert [r.name for r in hub.router.routes] == ["quotes", "open"]


def test_a_password_checked_before_a_reload_is_not_cached_after_it():
    hub = make_hub()
    auth = hub.authenticator
    generation = auth.generation
    result = auth.check(b"Bearer " + TOKEN)
    auth.replace_users(USERS)
    auth.store(b"Bearer " + TOKEN, *result, generation)
    assert auth.cache_size == 0


class Reactor:
    def __init__(self):
        self.calls = []

    def call_from_thread(self, f, *args):
        self.calls.append((f, args))


def test_a_conf_with_problems_is_refused_and_the_running_one_kept():
    hub = make_hub()

    def loader(path):
        raise ConfigError([f"{path}: routes[0].match: must start with /"])

    service = ReloadService(hub, "msghub.toml", Reactor().call_from_thread, loader)
    service.running = True
    running = hub.config
    assert service.reload() is False
    assert hub.config is running and service.refusals == 1


def test_a_good_conf_is_applied():
    hub = make_hub()
    routes = (RouteConfig(name="only", match="/only", discard=True),)
    service = ReloadService(hub, "msghub.toml", Reactor().call_from_thread, lambda path: config_like(hub, routes=routes))
    service.running = True
    assert service.reload() is True
    assert [r.name for r in hub.router.routes] == ["only"] and service.reloads == 1


def test_webhook_targets_reload_in_place_and_a_run_without_any_names_the_restart():
    from msghub.config_webhooks import WebhookTarget

    hub = make_hub()
    targets = {"a": WebhookTarget("a", "http://127.0.0.1/a")}
    route = RouteConfig(name="hooks", match="/hooks", webhooks=("a",))
    notes = hub.reload(config_like(hub, webhooks=targets, routes=(*ROUTES, route)))
    assert notes == [
        "webhooks: this run started without targets; the first ones need a restart",
        "routes: hooks: webhook targets new to this run need a restart",
    ]
    assert hub.webhooks is None and dict(hub.config.webhooks) == {}
