"""Provisioning bundles: the JSON that carries a device key from the server to its token.

    {"uid": "pole-0042", "kid_hex": "0123456789abcdef", "alg": "A256GCM", "key_hex": "..."}

The key is imported into the device's key store as non-extractable, under a label
derived from the kid (``citywatch-<kid_hex>``), and is not kept anywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol import ALG_NAMES, Cipher
from protocol._envelope import KID_LENGTH  # not exported by protocol (yet)

from ._errors import InvalidBundle
from ._keystore import KeyStore, key_length_for_alg

__all__ = ["ProvisioningBundle", "import_bundle", "key_label_for_kid"]

_FIELDS = frozenset({"uid", "kid_hex", "alg", "key_hex"})
# What the server's bundle carries besides the key (the device's config uses them;
# the key store does not).
_OTHER_FIELDS = frozenset({"server", "zone", "lat", "lon"})
_ALG_BY_NAME = {name: alg for alg, name in ALG_NAMES.items()}
_HEX = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class ProvisioningBundle:
    """A validated provisioning bundle."""

    uid: str
    """The device's UID (travels only encrypted)."""
    kid: bytes
    """The 8-byte key identifier, a random pseudonym sent in clear."""
    alg: int
    """COSE alg of the key: 1 (A128GCM) or 3 (A256GCM)."""
    key: bytes = field(repr=False)
    """The AES key: 16 bytes for A128GCM, 32 for A256GCM. Never printed."""

    def __post_init__(self) -> None:
        if not isinstance(self.uid, str) or not self.uid.strip():
            raise InvalidBundle("bundle field 'uid' must be a non-empty string")
        if not isinstance(self.kid, bytes) or len(self.kid) != KID_LENGTH:
            raise InvalidBundle(f"bundle kid must be {KID_LENGTH} bytes")
        if self.alg not in ALG_NAMES:
            raise InvalidBundle(f"bundle alg {self.alg!r} is not A128GCM (1) or A256GCM (3)")
        expected = key_length_for_alg(self.alg)
        if not isinstance(self.key, bytes) or len(self.key) != expected:
            length = len(self.key) if isinstance(self.key, bytes) else "?"
            raise InvalidBundle(
                f"bundle for kid {self.kid.hex()}: alg {ALG_NAMES[self.alg]} takes a "
                f"{expected}-byte key, but key_hex holds {length} bytes: the bundle is "
                "inconsistent, ask the server for a new one"
            )

    @property
    def label(self) -> str:
        """The key's label in the token."""
        return key_label_for_kid(self.kid)

    @classmethod
    def parse(cls, bundle: Mapping[str, object]) -> ProvisioningBundle:
        """Validate the JSON object of a bundle; raise ``InvalidBundle`` naming the field."""
        if not isinstance(bundle, Mapping):
            raise InvalidBundle(
                f"a provisioning bundle is a JSON object, not {type(bundle).__name__}"
            )
        missing = _FIELDS - bundle.keys()
        unknown = bundle.keys() - _FIELDS - _OTHER_FIELDS
        if missing or unknown:
            raise InvalidBundle(
                f"bundle fields must be {sorted(_FIELDS)} (and optionally "
                f"{sorted(_OTHER_FIELDS)}): missing {sorted(missing)}, "
                f"unknown {sorted(map(str, unknown))}"
            )
        alg_name = bundle["alg"]
        if not isinstance(alg_name, str) or alg_name not in _ALG_BY_NAME:
            raise InvalidBundle(f"bundle field 'alg' is {alg_name!r}, not 'A128GCM' or 'A256GCM'")
        uid = bundle["uid"]
        if not isinstance(uid, str):
            raise InvalidBundle("bundle field 'uid' must be a non-empty string")
        return cls(
            uid=uid,
            kid=_hex_field(bundle, "kid_hex", lengths=(KID_LENGTH,)),
            alg=_ALG_BY_NAME[alg_name],
            key=_hex_field(bundle, "key_hex", lengths=(16, 32)),
        )


def key_label_for_kid(kid: bytes) -> str:
    """Label of a device key in its token: ``citywatch-`` and the kid in lower-case hex."""
    if len(kid) != KID_LENGTH:
        raise ValueError(f"a kid is {KID_LENGTH} bytes, not {len(kid)}")
    return f"citywatch-{kid.hex()}"


def import_bundle(store: KeyStore, bundle: Mapping[str, object]) -> Cipher:
    """Validate ``bundle`` and import its key into ``store``; return the key's cipher.

    Re-importing the same bundle returns the stored key's cipher; a different key for
    the same kid raises ``KeyExists``. Use ``ProvisioningBundle.parse`` for the uid and kid.
    """
    parsed = ProvisioningBundle.parse(bundle)
    return store.import_key(parsed.label, parsed.key)


def _hex_field(bundle: Mapping[str, object], name: str, *, lengths: tuple[int, ...]) -> bytes:
    # The value of key_hex is secret: messages give its length, never its content.
    value = bundle[name]
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
        raise InvalidBundle(f"bundle field {name!r} must be a string of hex digit pairs")
    if len(value) // 2 not in lengths:
        expected = " or ".join(str(2 * n) for n in lengths)
        raise InvalidBundle(
            f"bundle field {name!r} must be {expected} hex digits, not {len(value)}"
        )
    return bytes.fromhex(value)
