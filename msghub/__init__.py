"""msghub: an HTTP-to-messaging hub speaking plain and compact HTTP."""

__version__ = "0.1.0"
