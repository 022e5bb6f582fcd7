"""Exceptions of the hardware layer.

    HardwareError
    ├── KeyStoreError
    │   ├── KeyStoreUnavailable          the store cannot be opened: fix the installation or
    │   │   │                            the configuration, then restart
    │   │   ├── KeyStoreDriverMissing    python-pkcs11 is not installed
    │   │   ├── KeyStoreModuleMissing    no file at the configured PKCS#11 module path
    │   │   ├── KeyStoreModuleInvalid    the file is not a PKCS#11 module or fails to initialise
    │   │   ├── TokenNotFound            no token carries the configured label
    │   │   ├── MechanismUnsupported     the token offers no CKM_AES_GCM
    │   │   └── WrongPin                 the token refused the user PIN
    │   │       └── PinLocked            ... and is locked after too many wrong PINs
    │   ├── KeyStoreClosed               we did something wrong: used after ``close()``
    │   ├── KeyNotFound                  we did something wrong: no key has that label
    │   ├── KeyExists                    we did something wrong: the label holds another key
    │   ├── UnsupportedKey               a key length or alg this store cannot hold
    │   │                                (AES-256 on an ATECC608, a 24-byte key ...)
    │   ├── KeyNotProtected              a key in the token is extractable or not sensitive
    │   └── TokenOperationFailed         the token failed an operation it should have done
    │                                    (removed, out of memory, internal error)
    ├── CameraError                      (hardware.camera)
    │   ├── CameraUnavailable            the camera cannot be opened
    │   │   ├── CameraDriverMissing      picamera2 / OpenCV not installed
    │   │   └── SceneError               a scene's media or timeline is unusable
    │   ├── CameraNotRunning             we did something wrong: read before start()
    │   └── NoFrame                      no frame to snapshot yet
    ├── GnssError                        gpsfake cannot run (not installed, gpsd not up)
    └── NotifyDriverMissing              the service-manager backend is not available

A malformed provisioning bundle is the protocol core's ``protocol.InvalidBundle``.
A tag that does not verify is not a hardware error: every ``Cipher`` raises the protocol
core's ``protocol.AuthenticationFailed`` for it, whichever store holds the key.

Messages say what is wrong and what to do about it. They never contain a PIN or a key.
"""

from __future__ import annotations

__all__ = [
    "HardwareError",
    "KeyExists",
    "KeyNotFound",
    "KeyNotProtected",
    "KeyStoreClosed",
    "KeyStoreDriverMissing",
    "KeyStoreError",
    "KeyStoreModuleInvalid",
    "KeyStoreModuleMissing",
    "KeyStoreUnavailable",
    "MechanismUnsupported",
    "PinLocked",
    "TokenNotFound",
    "TokenOperationFailed",
    "UnsupportedKey",
    "WrongPin",
]


class HardwareError(Exception):
    """Base of every error raised by the ``hardware`` package."""


class KeyStoreError(HardwareError):
    """Base of every key-store error."""


class KeyStoreUnavailable(KeyStoreError):
    """The key store cannot be opened; the installation or configuration must change."""


class KeyStoreDriverMissing(KeyStoreUnavailable):
    """The Python library of the driver is not installed."""


class KeyStoreModuleMissing(KeyStoreUnavailable):
    """No file at the configured PKCS#11 module path."""


class KeyStoreModuleInvalid(KeyStoreUnavailable):
    """The file is not a loadable PKCS#11 module, or the module fails to initialise."""


class TokenNotFound(KeyStoreUnavailable):
    """No token (or more than one) carries the configured label."""


class MechanismUnsupported(KeyStoreUnavailable):
    """The token does not offer a mechanism the key store needs (CKM_AES_GCM)."""


class WrongPin(KeyStoreUnavailable):
    """The token refused the user PIN."""


class PinLocked(WrongPin):
    """The token locked the user PIN after too many wrong attempts."""


class KeyStoreClosed(KeyStoreError):
    """The key store, or a cipher from it, was used after ``close()``."""


class KeyNotFound(KeyStoreError):
    """No key carries that label (or it was deleted)."""


class KeyExists(KeyStoreError):
    """The label already holds a different key."""


class UnsupportedKey(KeyStoreError):
    """A key length or algorithm that this store cannot hold."""


class KeyNotProtected(KeyStoreError):
    """A key found in the token could be read out (extractable or not sensitive)."""


class TokenOperationFailed(KeyStoreError):
    """The token failed an operation that should have worked."""
