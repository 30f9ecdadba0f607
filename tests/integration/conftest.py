"""Fixtures for tests against real services on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from msghub.testing_broker import RABBITMQ_SERVER, RabbitBroker, installed


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    """One private RabbitMQ node for the whole session, started on first use.

    Tests share it, so each declares its own uniquely named queues; a test may
    ``restart()`` it but must leave it running.
    """
    if not installed():
        # A failure, not a skip: a green run without the broker tests would
        # hide that the AMQP forwarder was never exercised.
        pytest.fail(
            f"RabbitMQ is not installed ({RABBITMQ_SERVER} or epmd is missing); "
            "run `scripts/bootstrap test` to install it",
            pytrace=False,
        )
    broker = RabbitBroker(tmp_path_factory.mktemp("rabbit"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
