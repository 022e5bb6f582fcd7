"""Exceptions of the trusted server.

    ServerError
    ├── ConfigError           the configuration file is missing, unreadable or invalid
    ├── MasterKeyError        the master key file is absent, malformed or too readable
    ├── VerifierModelError    a model file of the photo check is missing or not the pinned one
    ├── RegistryError         a registry or window operation cannot be done as asked
    │   ├── DeviceNotFound    no device with that UID
    │   └── DeviceExists      a device with that UID (or kid) is already registered
    ├── EncDeliveryError      the ENC did not accept an alert (retried by the outbox)
    └── UsageError            a command-line option is unusable, or the server refused it

``UsageError`` and the first five are "we (or the operator) did something wrong": they
stop a command or the start of the server with a message that says what to do.
``EncDeliveryError`` is "the peer did": it never escapes the outbox worker, which retries.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceExists",
    "DeviceNotFound",
    "EncDeliveryError",
    "MasterKeyError",
    "RegistryError",
    "ServerError",
    "UsageError",
    "VerifierModelError",
]


class ServerError(Exception):
    """Base of every error raised by the server package."""


class ConfigError(ServerError):
    """The configuration is invalid; the message names the file and the key."""


class MasterKeyError(ServerError):
    """The master key cannot be used; the message says what to do."""


class VerifierModelError(ServerError):
    """A model file of the photo check is missing or not the pinned file; the message
    names the file and says how to install it."""


class RegistryError(ServerError):
    """A registry or monitoring-window operation cannot be carried out."""


class DeviceNotFound(RegistryError):
    """No device with the given UID."""


class DeviceExists(RegistryError):
    """The UID (or, by a one-in-2^64 chance, the kid) is taken."""


class EncDeliveryError(ServerError):
    """An N1 was not answered by a valid N2 (HTTP error, timeout, bad N2)."""


class UsageError(ServerError):
    """A ``citywatch server`` option cannot be used as given, or the running server refused
    the request."""
