"""Provisioning bundles into key stores: the JSON that carries a device key from the server
to its token (its type, ``protocol.ProvisioningBundle``, is shared by every component).

The key is imported into the device's key store as non-extractable, under a label
derived from the kid (``citywatch-<kid_hex>``), and is not kept anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping

from protocol import Cipher, InvalidBundle, ProvisioningBundle
from protocol._envelope import KID_LENGTH  # not exported by protocol (yet)

from ._keystore import KeyStore

__all__ = ["InvalidBundle", "ProvisioningBundle", "import_bundle", "key_label_for_kid"]


def key_label_for_kid(kid: bytes) -> str:
    """Label of a device key in its token: ``citywatch-`` and the kid in lower-case hex."""
    if len(kid) != KID_LENGTH:
        raise ValueError(f"a kid is {KID_LENGTH} bytes, not {len(kid)}")
    return f"citywatch-{kid.hex()}"


def import_bundle(store: KeyStore, bundle: Mapping[str, object] | ProvisioningBundle) -> Cipher:
    """Validate ``bundle`` and import its key into ``store``; return the key's cipher.

    Re-importing the same bundle returns the stored key's cipher; a different key for
    the same kid raises ``KeyExists``. Use ``ProvisioningBundle.parse`` for the uid and kid.
    """
    parsed = bundle if isinstance(bundle, ProvisioningBundle) else ProvisioningBundle.parse(bundle)
    return store.import_key(key_label_for_kid(parsed.kid), parsed.key)
