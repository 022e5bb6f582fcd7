"""Exceptions of the protocol core.

    ProtocolError
    ├── LocalProtocolError          we did something wrong (misuse of a role object)
    └── RemoteProtocolError         the peer (or an attacker) did
        ├── MalformedMessage        not a well-formed CityWatch v1 message
        │   └── MessageTooLarge     larger than the receiver's limit for its role or type
        ├── UnexpectedMessage       a type this role never receives, or an alg not allowed
        ├── UnknownKey              the kid names no key the receiver knows
        ├── AuthenticationFailed    the AEAD tag does not verify
        ├── InvalidPlaintext        decrypted, but a key is missing, unknown or mistyped,
        │                           or a value is out of range
        └── InvalidBundle           a provisioning bundle is malformed or inconsistent

Every remote error carries ``reason``, a short machine-readable word that adapters
use as a metrics label (``"malformed"``, ``"too_large"``, ``"auth"`` ...).
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "InvalidBundle",
    "InvalidPlaintext",
    "LocalProtocolError",
    "MalformedMessage",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteProtocolError",
    "UnexpectedMessage",
    "UnknownKey",
]


class ProtocolError(Exception):
    """Base of every error raised by the protocol core."""


class LocalProtocolError(ProtocolError):
    """The caller used a role object in a way its state machine does not allow."""


class RemoteProtocolError(ProtocolError):
    """A message received from the network was rejected."""

    reason = "rejected"


class MalformedMessage(RemoteProtocolError):
    reason = "malformed"


class MessageTooLarge(MalformedMessage):
    reason = "too_large"


class UnexpectedMessage(RemoteProtocolError):
    reason = "unexpected"


class UnknownKey(RemoteProtocolError):
    reason = "unknown_kid"


class AuthenticationFailed(RemoteProtocolError):
    reason = "auth"


class InvalidPlaintext(RemoteProtocolError):
    reason = "plaintext"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.fields: dict[str, object] | None = None
        """The decrypted plaintext's map, where it was one: a receiver that answers an
        authenticated but unacceptable message (error 8) reads T_D from it."""
        self.envelope: object | None = None
        """The message's envelope (``protocol.Envelope``), set by ``open_message``."""


class InvalidBundle(RemoteProtocolError):
    """A provisioning bundle is malformed or inconsistent (the message names the field,
    never the key)."""

    reason = "bundle"
