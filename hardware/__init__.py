"""Interfaces and drivers for what a pole has: key store, GNSS, service manager, and
(in the subpackage ``hardware.camera``, which needs numpy and OpenCV) the camera.

Key stores (``KeyStore``) keep AES-GCM keys under labels and hand out ``protocol``
``Cipher`` objects that use a key without revealing it:

- ``Pkcs11KeyStore``: a PKCS#11 token (SoftHSM2, or an ATECC608 through cryptoauthlib,
  AES-128 only), the driver of devices, servers and CI.
- ``SoftwareKeyStore``: keys in process memory, for unit tests only.

``import_bundle`` imports a provisioning bundle; the SoftHSM2 helpers create tokens for
tests and benchmarks.

GNSS (``GnssReceiver``): ``GpsdReceiver`` speaks gpsd's JSON protocol; ``NoReceiver``
where a pole has none; ``coords`` falls back to the registered position. ``GpsFake``
runs the real gpsd fed by ``gpsfake`` (CI and the demo).

Service manager: ``ServiceNotifier`` (sd_notify READY, STATUS, WATCHDOG, STOPPING),
``WatchdogKeeper`` (feeds the watchdog from the event loop while a check passes),
``watchdog_interval``, ``configure_logging`` (journald under systemd, else stderr).

The exception tree is drawn in ``hardware._errors``.
"""

from ._errors import (
    HardwareError,
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
from ._gnss import (
    Fix,
    FixedPosition,
    FixMode,
    GnssConfig,
    GnssError,
    GnssReceiver,
    GnssStatus,
    GpsdConfig,
    GpsdReceiver,
    GpsFake,
    NoReceiver,
    NoReceiverConfig,
    coords,
    nmea_log,
    open_gnss,
    parse_gnss_config,
)
from ._keystore import KeyStore
from ._pkcs11 import Pkcs11Cipher, Pkcs11KeyStore
from ._provisioning import InvalidBundle, ProvisioningBundle, import_bundle, key_label_for_kid
from ._service import (
    NotifyDriverMissing,
    ServiceNotifier,
    WatchdogKeeper,
    configure_logging,
    journal_is_stderr,
    watchdog_interval,
)
from ._softhsm import SOFTHSM_MODULE_PATHS, SoftHsmToken, create_softhsm_tokens, find_softhsm_module
from ._softkeys import SoftwareCipher, SoftwareKeyStore

__all__ = [
    "SOFTHSM_MODULE_PATHS",
    "Fix",
    "FixMode",
    "FixedPosition",
    "GnssConfig",
    "GnssError",
    "GnssReceiver",
    "GnssStatus",
    "GpsFake",
    "GpsdConfig",
    "GpsdReceiver",
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
    "NoReceiver",
    "NoReceiverConfig",
    "NotifyDriverMissing",
    "PinLocked",
    "Pkcs11Cipher",
    "Pkcs11KeyStore",
    "ProvisioningBundle",
    "ServiceNotifier",
    "SoftHsmToken",
    "SoftwareCipher",
    "SoftwareKeyStore",
    "TokenNotFound",
    "TokenOperationFailed",
    "UnsupportedKey",
    "WatchdogKeeper",
    "WrongPin",
    "configure_logging",
    "coords",
    "create_softhsm_tokens",
    "find_softhsm_module",
    "import_bundle",
    "journal_is_stderr",
    "key_label_for_kid",
    "nmea_log",
    "open_gnss",
    "parse_gnss_config",
    "watchdog_interval",
]
