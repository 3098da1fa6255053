"""Exceptions raised by the broker package.

BrokerError
├── DecodeError (also ValueError)      a message body is not a valid Rung message
├── MessageTooLargeError (also ValueError)  a message over a size limit; not retried
├── UnroutableError                    a mandatory publish matched no queue
├── PublishTimeoutError                     no publisher confirm in time (broker blocked?)
├── BrokerUnavailableError                  cannot reach the broker (yet); retried by connect()
└── BrokerSettingsError (also ValueError)   a broker URL or TLS option is wrong; not retried
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerSettingsError",
    "BrokerUnavailableError",
    "DecodeError",
    "MessageTooLargeError",
    "PublishTimeoutError",
    "UnroutableError",
]


class BrokerError(Exception):
    """Root of every error the broker package raises on purpose."""


class DecodeError(BrokerError, ValueError):
    """A message body is malformed: the reason says what rule it broke."""


class MessageTooLargeError(BrokerError, ValueError):
    """A message over a size limit: ours (``MAX_MESSAGE_BYTES``, refused by ``encode``) or
    the broker's (``max_message_size``, refused with 406 PRECONDITION_FAILED). Sending it
    again cannot help: the message names the size and the limit."""


class UnroutableError(BrokerError):
    """A mandatory message matched no queue (for example, its worker is gone)."""


class PublishTimeoutError(BrokerError, TimeoutError):
    """The broker did not confirm a publish in time."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """The broker cannot be reached."""


class BrokerSettingsError(BrokerError, ValueError):
    """A broker URL or TLS setting is wrong: the message names it and the fix."""
