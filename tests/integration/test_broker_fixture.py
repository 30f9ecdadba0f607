"""The private broker fixture, checked with an independent client (pika)."""

from __future__ import annotations

import os
import uuid

import pika

from msghub.testing_broker import RabbitBroker


def connect(rabbit: RabbitBroker) -> pika.BlockingConnection:
    params = pika.URLParameters(rabbit.url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def test_broker_returns_a_one_mebibyte_binary_message_intact(rabbit: RabbitBroker) -> None:
    assert rabbit.url == f"amqp://guest:guest@127.0.0.1:{rabbit.port}/%2f"
    body = os.urandom(1 << 20)
    with connect(rabbit) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.basic_publish(exchange="", routing_key=queue, body=body, mandatory=True)
        method, _, got = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    assert got == body


def test_restart_keeps_persistent_message_in_durable_queue(rabbit: RabbitBroker) -> None:
    queue = f"test-restart-{uuid.uuid4().hex}"
    body = b"\x00survives\xff" * 100
    with connect(rabbit) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_publish(
            exchange="", routing_key=queue, body=body, mandatory=True,
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
    rabbit.restart()
    listed = rabbit.ctl("list_queues", "--quiet", "--no-table-headers", "name", "durable", "messages")
    assert f"{queue}\ttrue\t1" in listed.splitlines()
    with connect(rabbit) as connection:
        channel = connection.channel()
        method, properties, got = channel.basic_get(queue, auto_ack=True)
        channel.queue_delete(queue)
    assert method is not None
    assert got == body
    assert properties.delivery_mode == 2
