"""Interfaces and drivers for what a pole has. So far: the key store.

Key stores (``KeyStore``) keep AES-GCM keys under labels and hand out ``protocol``
``Cipher`` objects that use a key without revealing it:

- ``Pkcs11KeyStore``: a PKCS#11 token (SoftHSM2, or an ATECC608 through cryptoauthlib,
  AES-128 only), the driver of devices, servers and CI.
- ``SoftwareKeyStore``: keys in process memory, for unit tests only.

``import_bundle`` imports a provisioning bundle; the SoftHSM2 helpers create tokens for
tests and benchmarks. The exception tree is drawn in ``hardware._errors``.
"""

from ._errors import (
    HardwareError,
    InvalidBundle,
    KeyExists,
    KeyNotFound,
    KeyNotProtected,
    KeyStoreClosed,
    KeyStoreDriverMissing,
    KeyStoreError,
    KeyStoreModuleInvalid,
    KeyStoreModuleMissing,
    KeyStoreUnavailable,
    MechanismUnsupported,
    PinLocked,
    TokenNotFound,
    TokenOperationFailed,
    UnsupportedKey,
    WrongPin,
)
from ._keystore import KeyStore
from ._pkcs11 import Pkcs11Cipher, Pkcs11KeyStore
from ._provisioning import ProvisioningBundle, import_bundle, key_label_for_kid
from ._softhsm import SOFTHSM_MODULE_PATHS, SoftHsmToken, create_softhsm_tokens, find_softhsm_module
from ._softkeys import SoftwareCipher, SoftwareKeyStore

__all__ = [
    "SOFTHSM_MODULE_PATHS",
    "HardwareError",
    "InvalidBundle",
    "KeyExists",
    "KeyNotFound",
    "KeyNotProtected",
    "KeyStore",
    "KeyStoreClosed",
    "KeyStoreDriverMissing",
    "KeyStoreError",
    "KeyStoreModuleInvalid",
    "KeyStoreModuleMissing",
    "KeyStoreUnavailable",
    "MechanismUnsupported",
    "PinLocked",
    "Pkcs11Cipher",
    "Pkcs11KeyStore",
    "ProvisioningBundle",
    "SoftHsmToken",
    "SoftwareCipher",
    "SoftwareKeyStore",
    "TokenNotFound",
    "TokenOperationFailed",
    "UnsupportedKey",
    "WrongPin",
    "create_softhsm_tokens",
    "find_softhsm_module",
    "import_bundle",
    "key_label_for_kid",
]
