"""The checks every role runs on a received message, in the order protocol.md
section 2 requires: size, envelope, type allowed for the role, kid known, alg
allowed for the kid, size for the type; only then decrypt and parse."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from ._crypto import Cipher, message_hash, open_envelope, seal_message
from ._envelope import Envelope, decode_envelope
from ._errors import InvalidPlaintext, MessageTooLarge, UnexpectedMessage, UnknownKey
from ._messages import Message, MessageType, decode_plaintext
from ._timing import Limits

__all__ = ["Opened", "open_message", "seal"]

_LARGE_TYPES = frozenset({MessageType.C3, MessageType.N1, MessageType.N3})


@dataclass(frozen=True, slots=True)
class Opened:
    """A received message that passed every check of the envelope and plaintext."""

    envelope: Envelope
    message: Message

    @property
    def hash(self) -> bytes:
        return message_hash(self.envelope.raw)


def open_message(
    data: bytes,
    *,
    role: str,
    accepts: Collection[int],
    key_for: Callable[[bytes], Cipher | None],
    limits: Limits,
) -> Opened:
    """Raise a ``RemoteProtocolError`` for anything but a valid message for ``role``."""
    largest = limits.max_large_message if _LARGE_TYPES & set(accepts) else limits.max_small_message
    env = decode_envelope(data, max_size=largest)
    if env.type not in accepts:
        name = MessageType(env.type).name if env.type in MessageType._value2member_map_ else None
        raise UnexpectedMessage(
            f"the {role} does not accept message type {env.type}"
            + (f" ({name})" if name else " (unknown type)")
        )
    if env.type not in _LARGE_TYPES and len(env.raw) > limits.max_small_message:
        raise MessageTooLarge(
            f"{MessageType(env.type).name} of {len(env.raw)} bytes exceeds the limit of "
            f"{limits.max_small_message}"
        )
    cipher = key_for(env.kid)
    if cipher is None:
        raise UnknownKey(f"no key for kid {env.kid.hex()}")
    if env.alg != cipher.alg:
        raise UnexpectedMessage(f"alg {env.alg} is not allowed for kid {env.kid.hex()}")
    plaintext = open_envelope(env, cipher)
    try:
        return Opened(env, decode_plaintext(env.type, plaintext))
    except InvalidPlaintext as exc:
        exc.envelope = env
        raise


def seal(message: Message, *, cipher: Cipher, kid: bytes, random: Callable[[int], bytes]) -> bytes:
    return seal_message(
        cipher=cipher, kid=kid, type=message.TYPE, plaintext=message.to_plaintext(), iv=random(12)
    )
