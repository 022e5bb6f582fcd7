"""``Pkcs11KeyStore``: AES-GCM keys in a PKCS#11 token (SoftHSM2, an ATECC608 ...).

Keys are created in the token as sensitive, non-extractable, private token objects
usable only to encrypt and decrypt; sealing and opening run inside the token with
CKM_AES_GCM, so the key never reaches this process.

PKCS#11 login state belongs to the process, not to a session: a second ``C_Login`` on
the same token fails with CKR_USER_ALREADY_LOGGED_IN, and one ``C_Logout`` logs every
session out. So every ``Pkcs11KeyStore`` on one token in a process shares one logged-in
session (and one lock), which the last ``close()`` logs out.
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast

from protocol import ALG_A128GCM, ALG_A256GCM, AesGcmCipher, AuthenticationFailed

from ._errors import (
    KeyExists,
    KeyNotFound,
    KeyNotProtected,
    KeyStoreClosed,
    KeyStoreDriverMissing,
    KeyStoreModuleInvalid,
    KeyStoreModuleMissing,
    MechanismUnsupported,
    PinLocked,
    TokenNotFound,
    TokenOperationFailed,
    UnsupportedKey,
    WrongPin,
)
from ._keystore import KeyStore, check_iv, check_key_length, check_label, key_length_for_alg

_IMPORT_ERROR: ImportError | None = None
try:
    import pkcs11
    from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11 import exceptions as p11
except ImportError as exc:  # reported by Pkcs11KeyStore(), so SoftwareKeyStore still works
    _IMPORT_ERROR = exc
else:
    from pkcs11.attributes import ATTRIBUTE_TYPES

    # python-pkcs11 has no codec for CKA_ALLOWED_MECHANISMS, an array of CK_ULONG
    # mechanism numbers: register one, so keys can be limited to the one they need.
    def _pack_mechanisms(mechanisms: Any) -> bytes:
        return b"".join(int(m).to_bytes(_ULONG, _BYTE_ORDER) for m in mechanisms)

    def _unpack_mechanisms(data: bytes) -> list[Any]:
        return [
            Mechanism(int.from_bytes(data[i : i + _ULONG], _BYTE_ORDER))
            for i in range(0, len(data) - _ULONG + 1, _ULONG)
        ]

    ATTRIBUTE_TYPES.setdefault(Attribute.ALLOWED_MECHANISMS, (_pack_mechanisms, _unpack_mechanisms))

if TYPE_CHECKING:
    from pkcs11 import Session, Token
    from pkcs11._pkcs11 import lib as Pkcs11Module

__all__ = ["Pkcs11Cipher", "Pkcs11KeyStore"]

_T = TypeVar("_T")

_TAG_LENGTH = 16
_ULONG = ctypes.sizeof(ctypes.c_ulong)  # CK_ULONG
_BYTE_ORDER = sys.byteorder
# Authenticated data of the probe that compares a re-imported key with the stored one.
_PROBE_AAD = b"citywatch/keystore-probe"
_PIN_DIGEST_KEY = os.urandom(32)


class Pkcs11KeyStore(KeyStore):
    """AES-GCM keys in the token labelled ``token_label`` of the PKCS#11 ``module``.

    ``max_key_bits`` (128 or 256) overrides what the module reports for CKM_AES_GCM;
    an ATECC608 holds only 128-bit keys, and importing or generating a longer key then
    raises ``UnsupportedKey`` before the token is asked.

    Thread-safe: every call holds the lock of the token's shared session.
    """

    def __init__(
        self,
        module: str | os.PathLike[str],
        token_label: str,
        pin: str,
        *,
        max_key_bits: int | None = None,
    ) -> None:
        if _IMPORT_ERROR is not None:
            raise KeyStoreDriverMissing(
                f"python-pkcs11 cannot be imported ({_IMPORT_ERROR}): install it "
                "(pip install python-pkcs11) to use a PKCS#11 key store"
            )
        if max_key_bits not in (None, 128, 256):
            raise ValueError(f"max_key_bits is 128, 256 or None, not {max_key_bits!r}")
        self._module = os.fspath(module)
        self._token_label = token_label
        self._where = f"token {token_label!r} of {self._module}"
        self._closed = False

        lib = _load_module(self._module)
        token = _find_token(lib, self._module, token_label)
        mechanisms = _guard(self._where, "list its mechanisms", token.slot.get_mechanisms)
        if Mechanism.AES_GCM not in mechanisms:
            raise MechanismUnsupported(
                f"{self._where} does not offer CKM_AES_GCM: use a token (or a build of its "
                "PKCS#11 module) that supports AES-GCM"
            )
        self._can_generate = Mechanism.AES_KEY_GEN in mechanisms
        self._max_key_bits = max_key_bits or _reported_max_key_bits(token, self._where)
        self._login = _TokenLogin.acquire(self._module, token, pin, self._where)
        self._lock = self._login.lock

    @property
    def max_key_bits(self) -> int:
        return self._max_key_bits

    @property
    def token_label(self) -> str:
        return self._token_label

    def cipher(self, label: str) -> Pkcs11Cipher:
        check_label(label)
        with self._lock:
            key = self._find(label)
            if key is None:
                raise KeyNotFound(
                    f"no key labelled {label!r} in {self._where}: import or generate it first "
                    "(provisioning)"
                )
            return self._cipher_for(label, key)

    def import_key(self, label: str, key: bytes) -> Pkcs11Cipher:
        check_label(label)
        key = bytes(key)
        check_key_length(len(key), max_key_bits=self._max_key_bits, where=self._where)
        with self._lock:
            existing = self._find(label)
            if existing is not None:
                cipher = self._cipher_for(label, existing)
                if _same_key(cipher, key):
                    return cipher
                raise KeyExists(
                    f"label {label!r} in {self._where} already holds a different key: "
                    f"delete_key({label!r}) first if it is to be replaced"
                )
            template = {**_key_template(label), Attribute.VALUE: key}
            try:
                obj = self._login.session.create_object(template)
            except (p11.KeySizeRange, p11.AttributeValueInvalid, p11.TemplateInconsistent):
                raise self._refused_length(len(key)) from None
            except p11.PKCS11Error as exc:
                raise self._failure(f"import key {label!r}", exc) from None
            return self._cipher_for(label, cast(_TokenKey, obj))

    def generate_key(self, label: str, alg: int) -> Pkcs11Cipher:
        check_label(label)
        length = key_length_for_alg(alg)
        check_key_length(length, max_key_bits=self._max_key_bits, where=self._where)
        if not self._can_generate:
            raise UnsupportedKey(
                f"{self._where} offers no CKM_AES_KEY_GEN: generate the key elsewhere and "
                "import it (import_key or a provisioning bundle)"
            )
        with self._lock:
            if self._find(label) is not None:
                raise KeyExists(
                    f"label {label!r} in {self._where} already holds a key: choose another label"
                )
            template = _key_template(label)
            del template[Attribute.CLASS], template[Attribute.KEY_TYPE]
            try:
                obj = self._login.session.generate_key(
                    KeyType.AES,
                    length * 8,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template=template,
                )
            except (p11.KeySizeRange, p11.AttributeValueInvalid, p11.TemplateInconsistent):
                raise self._refused_length(length) from None
            except p11.PKCS11Error as exc:
                raise self._failure(f"generate key {label!r}", exc) from None
            return self._cipher_for(label, cast(_TokenKey, obj))

    def has_key(self, label: str) -> bool:
        check_label(label)
        with self._lock:
            return self._find(label) is not None

    def delete_key(self, label: str) -> None:
        check_label(label)
        with self._lock:
            key = self._find(label)
            if key is None:
                raise KeyNotFound(f"no key labelled {label!r} in {self._where}: nothing to delete")
            try:
                key.destroy()
            except p11.PKCS11Error as exc:
                raise self._failure(f"delete key {label!r}", exc) from None

    def close(self) -> None:
        with self._lock:  # two threads may close at once; only one releases the login
            if self._closed:
                return
            self._closed = True
        self._login.release()

    def _find(self, label: str) -> _TokenKey | None:
        """The secret key labelled ``label``, or None. Call with the lock held."""
        self._check_open()
        try:
            found = list(
                self._login.session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
                )
            )
        except p11.PKCS11Error as exc:
            raise self._failure(f"look up key {label!r}", exc) from None
        if len(found) > 1:
            raise KeyExists(
                f"{len(found)} keys are labelled {label!r} in {self._where}: delete the "
                "duplicates (pkcs11-tool --delete-object) so the label names one key"
            )
        return cast(_TokenKey, found[0]) if found else None

    def _cipher_for(self, label: str, key: _TokenKey) -> Pkcs11Cipher:
        """Check that ``key`` is an AES key that cannot leave the token; wrap it."""
        key_type = _attribute(key, Attribute.KEY_TYPE)
        if key_type is not None and key_type != KeyType.AES:
            raise UnsupportedKey(
                f"key {label!r} in {self._where} is not an AES key: use another label"
            )
        if _attribute(key, Attribute.SENSITIVE) is False or _attribute(key, Attribute.EXTRACTABLE):
            raise KeyNotProtected(
                f"key {label!r} in {self._where} can be read out of the token (not sensitive "
                "or extractable): delete it and provision it again through this key store"
            )
        length = _attribute(key, Attribute.VALUE_LEN)
        if length is None and self._max_key_bits == 128:
            length = 16  # some modules hide CKA_VALUE_LEN; this store holds nothing else
        if length not in (16, 32):
            raise UnsupportedKey(
                f"key {label!r} in {self._where} is {length!r} bytes long, not 16 or 32: "
                "it is not a CityWatch AES-GCM key"
            )
        return Pkcs11Cipher(self, label, key, ALG_A128GCM if length == 16 else ALG_A256GCM)

    def _check_open(self) -> None:
        if self._closed:
            raise KeyStoreClosed(f"the key store on {self._where} is closed: open a new one")

    def _refused_length(self, length: int) -> UnsupportedKey:
        return UnsupportedKey(
            f"{self._where} refused a {length * 8}-bit AES key: set max_key_bits=128 "
            "(keystore.max_key_bits) for this token and provision A128GCM keys"
        )

    def _failure(self, action: str, exc: Exception) -> Exception:
        """Translate a PKCS#11 error raised while doing ``action``."""
        if isinstance(exc, p11.ObjectHandleInvalid | p11.KeyHandleInvalid):
            return KeyNotFound(
                f"the key is no longer in {self._where} (deleted?): could not {action}; "
                "get a new cipher from the key store"
            )
        return TokenOperationFailed(
            f"{self._where} failed to {action}: {_describe(exc)}; check that the token is "
            "present and working, then restart"
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Pkcs11KeyStore({self._where}, max_key_bits={self._max_key_bits}, {state})"


class Pkcs11Cipher:
    """A ``Cipher`` whose key stays in a PKCS#11 token; AES-GCM runs inside the token."""

    __slots__ = ("_alg", "_key", "_label", "_store")

    def __init__(self, store: Pkcs11KeyStore, label: str, key: _TokenKey, alg: int) -> None:
        self._store = store
        self._label = label
        self._key = key
        self._alg = alg

    @property
    def alg(self) -> int:
        return self._alg

    @property
    def label(self) -> str:
        return self._label

    def seal(self, *, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        check_iv(iv)
        params = GCMParams(bytes(iv), bytes(aad), _TAG_LENGTH * 8)
        with self._store._lock:
            self._store._check_open()
            try:
                out = self._key.encrypt(
                    bytes(plaintext), mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
            except p11.PKCS11Error as exc:
                raise self._store._failure(f"seal with key {self._label!r}", exc) from None
        return _whole(out)

    def open(self, *, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        check_iv(iv)
        if len(ciphertext) < _TAG_LENGTH:
            raise AuthenticationFailed("ciphertext is shorter than the AEAD tag")
        params = GCMParams(bytes(iv), bytes(aad), _TAG_LENGTH * 8)
        with self._store._lock:
            self._store._check_open()
            try:
                out = self._key.decrypt(
                    bytes(ciphertext), mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
            # The standard answer to a bad tag is CKR_ENCRYPTED_DATA_INVALID; SoftHSM2 2.6
            # gives CKR_GENERAL_ERROR, so that one counts as a bad tag too.
            except (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.GeneralError):
                raise AuthenticationFailed("AEAD tag does not verify") from None
            except p11.PKCS11Error as exc:
                raise self._store._failure(f"open with key {self._label!r}", exc) from None
        return _whole(out)

    def __repr__(self) -> str:
        return f"Pkcs11Cipher(label={self._label!r}, alg={self._alg})"


class _TokenKey(Protocol):
    """What this module uses of a python-pkcs11 AES key (its classes mix these in at run
    time, so its static ``SecretKey`` type does not show them)."""

    def __getitem__(self, attribute: Attribute) -> Any: ...

    def encrypt(self, data: bytes, **kwargs: Any) -> bytes | Iterator[bytes]: ...

    def decrypt(self, data: bytes, **kwargs: Any) -> bytes | Iterator[bytes]: ...

    def destroy(self) -> None: ...


class _TokenLogin:
    """The one logged-in session of this process on one token, shared by its stores."""

    _registry: ClassVar[dict[tuple[str, bytes], _TokenLogin]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, key: tuple[str, bytes], session: Session, pin_digest: bytes) -> None:
        self.key = key
        self.session = session
        self.pin_digest = pin_digest
        # Re-entrant: import_key seals a probe through a cipher while holding it.
        self.lock = threading.RLock()
        self.users = 1

    @classmethod
    def acquire(cls, module: str, token: Token, pin: str, where: str) -> _TokenLogin:
        key = (os.path.realpath(module), bytes(token.serial))
        # Only a keyed digest is kept, to check the PIN of a second store on a logged-in
        # token without keeping the PIN itself.
        digest = hmac.digest(_PIN_DIGEST_KEY, pin.encode(), "sha256")
        with cls._registry_lock:
            login = cls._registry.get(key)
            if login is not None:
                if not hmac.compare_digest(login.pin_digest, digest):
                    raise WrongPin(_wrong_pin_message(where))
                login.users += 1
                return login
            session = _open_session(token, pin, where)
            login = cls._registry[key] = cls(key, session, digest)
            return login

    def release(self) -> None:
        with self._registry_lock:
            self.users -= 1
            if self.users:
                return
            del self._registry[self.key]
            # If the token is gone or already logged out, there is nothing left to release.
            with self.lock, contextlib.suppress(p11.PKCS11Error):
                self.session.close()  # C_Logout, C_CloseSession


def _load_module(module: str) -> Pkcs11Module:
    if os.sep in module and not os.path.isfile(module):
        raise KeyStoreModuleMissing(_missing_module_message(module))
    try:
        return pkcs11.lib(module)
    except p11.PKCS11Error as exc:
        if not os.path.isfile(module) and "No such file" in str(exc):
            raise KeyStoreModuleMissing(_missing_module_message(module)) from None
        raise KeyStoreModuleInvalid(
            f"PKCS#11 module {module} failed to load or initialise ({_describe(exc)}): check "
            "that it is a PKCS#11 module built for this machine and that its configuration is "
            "readable (SoftHSM2: SOFTHSM2_CONF, default /etc/softhsm/softhsm2.conf, and the "
            "directories.tokendir it names)"
        ) from None


def _missing_module_message(module: str) -> str:
    return (
        f"PKCS#11 module {module} not found: install softhsm2 (or the PKCS#11 module of "
        "your secure element, e.g. cryptoauthlib for an ATECC608) or set keystore.module "
        "to its path"
    )


def _find_token(lib: Pkcs11Module, module: str, token_label: str) -> Token:
    try:
        return lib.get_token(token_label=token_label)
    except p11.NoSuchToken:
        labels = sorted(
            repr(t.label) for t in _guard(module, "list tokens", lib.get_tokens) if t.label
        )
        present = ", ".join(labels) if labels else "none"
        raise TokenNotFound(
            f"no token labelled {token_label!r} in {module} (tokens present: {present}): "
            "initialise it (SoftHSM2: softhsm2-util --init-token --free --label "
            f"{token_label} ...) or set keystore.token_label"
        ) from None
    except p11.MultipleTokensReturned:
        raise TokenNotFound(
            f"several tokens are labelled {token_label!r} in {module}: relabel them so the "
            "label names one token"
        ) from None
    except p11.PKCS11Error as exc:
        raise TokenOperationFailed(
            f"{module} failed to list its tokens: {_describe(exc)}"
        ) from None


def _open_session(token: Token, pin: str, where: str) -> Session:
    try:
        return token.open(rw=True, user_pin=pin)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
        raise WrongPin(_wrong_pin_message(where)) from None
    except p11.PinLocked:
        raise PinLocked(
            f"the user PIN of {where} is locked after too many wrong PINs: unlock it with the "
            "SO PIN (SoftHSM2: softhsm2-util --init-pin ...), then fix keystore.pin"
        ) from None
    except p11.UserPinNotInitialized:
        raise WrongPin(
            f"{where} has no user PIN yet: initialise it (C_InitPIN; SoftHSM2: softhsm2-util "
            "--init-token sets one)"
        ) from None
    except p11.UserAlreadyLoggedIn:
        raise TokenOperationFailed(
            f"{where} is already logged in by other code of this process (outside "
            "Pkcs11KeyStore): let one Pkcs11KeyStore own the login"
        ) from None
    except p11.PKCS11Error as exc:
        raise TokenOperationFailed(
            f"{where} refused to open a session: {_describe(exc)}; check the token"
        ) from None


def _wrong_pin_message(where: str) -> str:
    return f"{where} refused the user PIN: check keystore.pin (the token's user PIN)"


def _reported_max_key_bits(token: Token, where: str) -> int:
    """The longest AES-GCM key the module reports, as 128 or 256."""
    info = _guard(where, "describe CKM_AES_GCM", token.slot.get_mechanism_info, Mechanism.AES_GCM)
    size = info.max_key_length
    if not size:
        return 256  # not reported; the token will refuse what it cannot hold
    # PKCS#11 2.40 gives AES key sizes in bytes, but some modules give bits.
    bits = size if size >= 64 else size * 8
    return 256 if bits >= 256 else 128


def _key_template(label: str) -> dict[Attribute, Any]:
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.LABEL: label,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        # Nothing else: wrapping, deriving or MACing are ways to learn about the key.
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        # ... and AES-GCM only (raw AES-ECB would be an oracle on the key), with no way
        # to switch any of this on later or to copy the key to an object that could.
        Attribute.ALLOWED_MECHANISMS: [Mechanism.AES_GCM],
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
    }


def _attribute(key: _TokenKey, attribute: Attribute) -> Any:
    """An attribute of ``key``, or None if the module does not report it."""
    try:
        return key[attribute]
    except (p11.AttributeTypeInvalid, p11.AttributeSensitive, p11.FunctionNotSupported):
        return None


def _whole(out: bytes | Iterator[bytes]) -> bytes:
    # python-pkcs11 answers bytes with bytes; chunks come back only for an iterator of input.
    return out if isinstance(out, bytes) else b"".join(out)


def _same_key(cipher: Pkcs11Cipher, key: bytes) -> bool:
    """Whether the token's key is ``key``: both must give the same tag on a random IV."""
    iv = os.urandom(12)
    theirs = cipher.seal(iv=iv, plaintext=b"", aad=_PROBE_AAD)
    ours = AesGcmCipher(key).seal(iv=iv, plaintext=b"", aad=_PROBE_AAD)
    return hmac.compare_digest(theirs, ours)


def _guard(where: str, action: str, call: Callable[..., _T], *args: object) -> _T:
    try:
        return call(*args)
    except p11.PKCS11Error as exc:
        raise TokenOperationFailed(f"{where} failed to {action}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
