"""Destinations behind ``msghub.sink.ISink``: discard, AMQP and webhooks."""
