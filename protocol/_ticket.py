"""C2 tickets: opaque bytes, sealed under a server-only key, that let any server
replica check without shared session state that C1/C2 happened for a kid and T_D."""

from __future__ import annotations

from collections.abc import Callable

import cbor2

from ._crypto import AesGcmCipher
from ._errors import AuthenticationFailed

__all__ = ["TicketError", "TicketSealer"]

_VERSION = 1
_AAD = b"citywatch/v1 ticket"


class TicketError(Exception):
    """The ticket is not one of ours, is for another device or T_D, or has expired."""


class TicketSealer:
    """Makes and checks tickets with a 32-byte key shared by the server replicas only."""

    def __init__(self, key: bytes, *, random: Callable[[int], bytes]) -> None:
        if len(key) != 32:
            raise ValueError("the ticket key is 32 bytes")
        self._cipher = AesGcmCipher(key)
        self._random = random

    def issue(self, *, kid: bytes, td: int, expires: int) -> bytes:
        iv = self._random(12)
        body = cbor2.dumps([kid, td, expires], canonical=True)
        return bytes([_VERSION]) + iv + self._cipher.seal(iv=iv, plaintext=body, aad=_AAD)

    def check(self, ticket: bytes, *, kid: bytes, td: int, now: int) -> None:
        """Raise ``TicketError`` unless ``ticket`` was issued for ``kid``/``td`` and is live."""
        if len(ticket) < 1 + 12 + 16 or ticket[0] != _VERSION:
            raise TicketError("not a ticket of this server")
        try:
            body = self._cipher.open(iv=ticket[1:13], ciphertext=ticket[13:], aad=_AAD)
            t_kid, t_td, expires = cbor2.loads(body)
        except (AuthenticationFailed, ValueError, TypeError):
            raise TicketError("ticket does not verify under this server's key") from None
        if t_kid != kid:
            raise TicketError("ticket was issued to another device")
        if t_td != td:
            raise TicketError("ticket was issued for another T_D")
        if now > expires:
            raise TicketError("ticket has expired")
