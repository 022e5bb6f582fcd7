"""Exceptions of the ENC package.

    EncError
    ├── ConfigError          the configuration is wrong (the message names the file and key)
    ├── StoreError           the alert store failed; the caller answers "retry later"
    ├── NotFound             no such alert or operator
    ├── ActionRefused        an operator action that the alert's state or the role forbids
    ├── LoginRefused         wrong password, unknown or disabled operator
    │   └── LoginThrottled   too many failures from that address or for that account:
    │                        try again after ``retry_after_s``
    └── UsageError           a command-line option or answer is unusable

``ConfigError`` and ``StoreError`` are our side; ``ActionRefused`` and ``LoginRefused``
are the caller's (an operator or an attacker). Messages from the network that are not
valid N1s never raise: ``protocol.EncEndpoint`` turns them into ``MessageDropped``.
"""

from __future__ import annotations

__all__ = [
    "ActionRefused",
    "ConfigError",
    "EncError",
    "LoginRefused",
    "LoginThrottled",
    "NotFound",
    "StoreError",
    "UsageError",
]


class EncError(Exception):
    """Base of every error raised by the ENC package."""


class ConfigError(EncError):
    """The configuration file is missing, unreadable or invalid."""


class StoreError(EncError):
    """The database could not be reached or refused the write."""


class NotFound(EncError):
    """No alert or operator by that name."""


class ActionRefused(EncError):
    """The action is not allowed for the alert's state or the operator's role."""


class LoginRefused(EncError):
    """A login or password check failed; the message is safe to show (says nothing more)."""


class LoginThrottled(LoginRefused):
    """Not checked at all: the address or the account is in its back-off."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UsageError(EncError):
    """A ``citywatch enc`` option (or an answer at its prompt) cannot be used as given."""
