"""Hub.reload of [[subscriptions]]: route taps added, changed and removed; an unchanged one keeps its readers."""

from __future__ import annotations

import dataclasses

from fakes import connect
from test_push_tap import make_hub, publish, subscribe

from msghub.config_amqp import AmqpConfig
from msghub.config_subscriptions import AmqpSource, SubscriptionConfig
from msghub.ingress.http import HttpIngress


def reload_subs(hub, *subs):
    return hub.reload(dataclasses.replace(hub.config, subscriptions=subs))


def test_an_unchanged_subscription_keeps_its_open_reader_and_a_new_one_taps_at_once():
    hub = make_hub()
    _, transport, _, reader = subscribe(hub, b"/tap/orders")
    kept = hub.config.subscriptions[0]
    new = SubscriptionConfig(name="new", match="/tap/new", route="orders")
    assert reload_subs(hub, kept, new) == []
    assert [s.name for s in hub.push.subscriptions] == ["orders", "new"]
    _, new_transport, head, new_reader = subscribe(hub, b"/tap/new")
    assert head.startswith(b"HTTP/1.1 200 OK")
    publish(hub, b"after")
    assert [e.data for e in reader.feed(transport.value())] == ["after"]  # the same connection, still fed
    assert [e.data for e in new_reader.feed(new_transport.value())] == ["after"]


def test_a_removed_or_changed_subscription_closes_its_readers_and_its_path_goes():
    hub = make_hub()
    _, transport, _, _ = subscribe(hub, b"/tap/held")
    orders = hub.config.subscriptions[0]
    assert reload_subs(hub, orders) == []
    assert transport.disconnecting or not transport.connected
    protocol, t = connect(HttpIngress, hub)
    protocol.dataReceived(b"GET /tap/held HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 404")
    assert [r.name for r in hub.router.routes] == ["orders", "held"]  # the routes are untouched


def test_a_new_amqp_source_needs_a_restart():
    hub = make_hub()
    amqp = SubscriptionConfig(name="quotes", match="/tap/quotes", amqp=AmqpSource(exchange="amq.topic", binding="q"))
    config = dataclasses.replace(hub.config, amqp=AmqpConfig(), subscriptions=(*hub.config.subscriptions, amqp))
    notes = hub.reload(config)
    assert "subscriptions: quotes: a new or changed AMQP source needs a restart" in notes
    assert "quotes" not in [s.name for s in hub.push.subscriptions]
