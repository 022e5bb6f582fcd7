"""Key stores: the software fake and a real SoftHSM2 token through PKCS#11 (no mocks).

The contract tests run against both stores, so the fake stays faithful. The software
``AesGcmCipher`` of the protocol core (``cryptography``) is the independent
implementation that every token result is checked against.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

import protocol
from hardware import (
    HardwareError,
    InvalidBundle,
    KeyExists,
    KeyNotFound,
    KeyNotProtected,
    KeyStore,
    KeyStoreClosed,
    KeyStoreError,
    KeyStoreModuleInvalid,
    KeyStoreModuleMissing,
    KeyStoreUnavailable,
    Pkcs11KeyStore,
    ProvisioningBundle,
    SoftHsmToken,
    SoftwareKeyStore,
    TokenNotFound,
    UnsupportedKey,
    WrongPin,
    import_bundle,
    key_label_for_kid,
)
from protocol import AesGcmCipher, AuthenticationFailed, Cipher
from protocol._crypto import open_envelope, seal_message

A128, A256 = protocol.ALG_A128GCM, protocol.ALG_A256GCM
LARGE = 300_000  # a C3 photo report is up to about this size

MakeStore = Callable[..., KeyStore]


def new_label() -> str:
    # The SoftHSM2 token lives for the whole session: every test uses fresh labels.
    return f"test-{uuid.uuid4().hex[:12]}"


def iv() -> bytes:
    return os.urandom(12)


@pytest.fixture(params=["software", "softhsm2"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Opens stores of one kind (``make_store(max_key_bits=128)``); closes them afterwards."""
    stores: list[KeyStore] = []

    def make(**options: Any) -> KeyStore:
        if request.param == "software":
            store: KeyStore = SoftwareKeyStore(**options)
        else:
            token: SoftHsmToken = request.getfixturevalue("softhsm_token")
            store = Pkcs11KeyStore(*token, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> KeyStore:
    return make_store()


# -- the contract, on both stores ------------------------------------------------------


@pytest.mark.parametrize("size", [64, LARGE], ids=["64B", "300KB"])
@pytest.mark.parametrize("key_length", [16, 32], ids=["A128GCM", "A256GCM"])
def test_sealed_in_store_opens_in_software_and_back(
    store: KeyStore, key_length: int, size: int
) -> None:
    key = os.urandom(key_length)
    software = AesGcmCipher(key)
    cipher = store.import_key(new_label(), key)
    assert cipher.alg == software.alg == (A128 if key_length == 16 else A256)
    plaintext, aad = os.urandom(size), b"protected header"

    nonce = iv()
    sealed = cipher.seal(iv=nonce, plaintext=plaintext, aad=aad)
    assert sealed == software.seal(iv=nonce, plaintext=plaintext, aad=aad)
    assert software.open(iv=nonce, ciphertext=sealed, aad=aad) == plaintext

    nonce = iv()
    sealed = software.seal(iv=nonce, plaintext=plaintext, aad=aad)
    assert cipher.open(iv=nonce, ciphertext=sealed, aad=aad) == plaintext


def test_empty_plaintext_and_aad(store: KeyStore) -> None:
    key = os.urandom(32)
    cipher = store.import_key(new_label(), key)
    nonce = iv()
    sealed = cipher.seal(iv=nonce, plaintext=b"", aad=b"")
    assert len(sealed) == 16
    assert AesGcmCipher(key).open(iv=nonce, ciphertext=sealed, aad=b"") == b""
    assert cipher.open(iv=nonce, ciphertext=sealed, aad=b"") == b""


def test_cipher_is_a_protocol_cipher_and_seals_envelopes(store: KeyStore) -> None:
    key, kid = os.urandom(32), os.urandom(8)
    cipher = store.import_key(new_label(), key)
    assert isinstance(cipher, Cipher)

    raw = seal_message(cipher=cipher, kid=kid, type=3, plaintext=b"report", iv=iv())
    envelope = protocol.decode_envelope(raw, max_size=1 << 20)
    assert open_envelope(envelope, AesGcmCipher(key)) == b"report"

    raw = seal_message(cipher=AesGcmCipher(key), kid=kid, type=4, plaintext=b"receipt", iv=iv())
    assert open_envelope(protocol.decode_envelope(raw, max_size=1 << 20), cipher) == b"receipt"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c, a, n: (c[:-1] + bytes([c[-1] ^ 1]), a, n), id="tag"),
        pytest.param(lambda c, a, n: (bytes([c[0] ^ 0x80]) + c[1:], a, n), id="ciphertext"),
        pytest.param(lambda c, a, n: (c, a + b"x", n), id="aad"),
        pytest.param(lambda c, a, n: (c, a, bytes(12)), id="iv"),
        pytest.param(lambda c, a, n: (c[:15], a, n), id="shorter-than-tag"),
        pytest.param(lambda c, a, n: (b"", a, n), id="empty"),
    ],
)
def test_tampering_raises_authentication_failed(
    store: KeyStore, tamper: Callable[[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]
) -> None:
    cipher = store.import_key(new_label(), os.urandom(32))
    nonce, aad = iv(), b"aad"
    sealed = cipher.seal(iv=nonce, plaintext=b"coordinates 52.23, 21.01", aad=aad)
    ciphertext, aad2, nonce2 = tamper(sealed, aad, nonce)
    with pytest.raises(AuthenticationFailed):
        cipher.open(iv=nonce2, ciphertext=ciphertext, aad=aad2)
    # A failed open leaves nothing behind in the token: the key still works.
    assert cipher.open(iv=nonce, ciphertext=sealed, aad=aad) == b"coordinates 52.23, 21.01"


def test_other_key_does_not_open(store: KeyStore) -> None:
    one = store.import_key(new_label(), os.urandom(32))
    other = store.import_key(new_label(), os.urandom(32))
    nonce = iv()
    with pytest.raises(AuthenticationFailed):
        other.open(iv=nonce, ciphertext=one.seal(iv=nonce, plaintext=b"x", aad=b""), aad=b"")


@pytest.mark.parametrize("alg, length", [(A128, 16), (A256, 32)])
def test_generate_key(store: KeyStore, alg: int, length: int) -> None:
    label = new_label()
    cipher = store.generate_key(label, alg)
    assert cipher.alg == alg
    assert store.has_key(label)
    nonce = iv()
    sealed = cipher.seal(iv=nonce, plaintext=b"hello", aad=b"aad")
    assert len(sealed) == 5 + 16
    assert store.cipher(label).open(iv=nonce, ciphertext=sealed, aad=b"aad") == b"hello"
    # Two generated keys differ.
    other = store.generate_key(new_label(), alg)
    assert other.seal(iv=nonce, plaintext=b"hello", aad=b"aad") != sealed


def test_generate_key_rejects_unknown_alg(store: KeyStore) -> None:
    with pytest.raises(UnsupportedKey, match="alg 2 is not A128GCM"):
        store.generate_key(new_label(), 2)


@pytest.mark.parametrize("length", [0, 15, 24, 33])
def test_import_rejects_key_lengths_the_protocol_does_not_use(store: KeyStore, length: int) -> None:
    label = new_label()
    with pytest.raises(UnsupportedKey, match=f"16 or 32 bytes, not {length}"):
        store.import_key(label, os.urandom(length))
    assert not store.has_key(label)


def test_cipher_finds_an_imported_key(store: KeyStore) -> None:
    label, key = new_label(), os.urandom(16)
    store.import_key(label, key)
    cipher = store.cipher(label)
    assert cipher.alg == A128
    nonce = iv()
    assert cipher.seal(iv=nonce, plaintext=b"x", aad=b"") == AesGcmCipher(key).seal(
        iv=nonce, plaintext=b"x", aad=b""
    )


def test_reimporting_the_same_key_is_idempotent_and_a_different_one_is_refused(
    store: KeyStore,
) -> None:
    label, key = new_label(), os.urandom(32)
    store.import_key(label, key)
    again = store.import_key(label, key)  # provisioning re-run
    nonce = iv()
    assert again.seal(iv=nonce, plaintext=b"x", aad=b"") == AesGcmCipher(key).seal(
        iv=nonce, plaintext=b"x", aad=b""
    )
    with pytest.raises(KeyExists, match=f"label {label!r} .*already holds a different key"):
        store.import_key(label, os.urandom(32))
    with pytest.raises(KeyExists, match="already holds a key"):
        store.generate_key(label, A256)


def test_missing_key(store: KeyStore) -> None:
    label = new_label()
    assert not store.has_key(label)
    with pytest.raises(KeyNotFound, match=f"no key labelled {label!r}"):
        store.cipher(label)
    with pytest.raises(KeyNotFound, match=f"no key labelled {label!r}"):
        store.delete_key(label)


def test_delete_key_ends_its_ciphers(store: KeyStore) -> None:
    label = new_label()
    cipher = store.import_key(label, os.urandom(32))
    store.delete_key(label)
    assert not store.has_key(label)
    with pytest.raises(KeyNotFound):
        cipher.seal(iv=iv(), plaintext=b"x", aad=b"")
    with pytest.raises(KeyNotFound):
        store.cipher(label)
    # The label is free again, for another key; the old cipher does not come back to life.
    store.import_key(label, os.urandom(32))
    with pytest.raises(KeyNotFound):
        cipher.seal(iv=iv(), plaintext=b"x", aad=b"")


def test_closed_store_and_its_ciphers_refuse_work(make_store: MakeStore) -> None:
    store = make_store()
    label = new_label()
    cipher = store.import_key(label, os.urandom(32))
    store.close()
    store.close()  # idempotent
    with pytest.raises(KeyStoreClosed):
        cipher.seal(iv=iv(), plaintext=b"x", aad=b"")
    with pytest.raises(KeyStoreClosed):
        cipher.open(iv=iv(), ciphertext=bytes(32), aad=b"")
    with pytest.raises(KeyStoreClosed):
        store.cipher(label)
    with pytest.raises(KeyStoreClosed):
        store.has_key(label)


def test_context_manager_closes(make_store: MakeStore) -> None:
    with make_store() as store:
        cipher = store.generate_key(new_label(), A128)
    with pytest.raises(KeyStoreClosed):
        cipher.seal(iv=iv(), plaintext=b"x", aad=b"")


@pytest.mark.parametrize("length", [8, 11, 13, 16])
def test_iv_must_be_12_bytes(store: KeyStore, length: int) -> None:
    cipher = store.generate_key(new_label(), A256)
    with pytest.raises(ValueError, match=f"12 bytes here, not {length}"):
        cipher.seal(iv=os.urandom(length), plaintext=b"x", aad=b"")
    with pytest.raises(ValueError, match=f"12 bytes here, not {length}"):
        cipher.open(iv=os.urandom(length), ciphertext=bytes(32), aad=b"")


@pytest.mark.parametrize("label", ["", None, 7])
def test_label_must_be_a_non_empty_string(store: KeyStore, label: Any) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        store.import_key(label, os.urandom(16))


def test_aes_128_only_store_refuses_256_bit_keys(make_store: MakeStore) -> None:
    """What an ATECC608 (AES-128 only) does, said before the token is asked."""
    store = make_store(max_key_bits=128)
    assert store.max_key_bits == 128
    label = new_label()
    with pytest.raises(UnsupportedKey, match=r"at most 128 bits, not 256: provision .* A128GCM"):
        store.import_key(label, os.urandom(32))
    with pytest.raises(UnsupportedKey, match="at most 128 bits, not 256"):
        store.generate_key(label, A256)
    assert not store.has_key(label)
    assert store.generate_key(label, A128).alg == A128


def test_concurrent_use_from_threads(store: KeyStore) -> None:
    key = os.urandom(32)
    cipher = store.import_key(new_label(), key)
    software = AesGcmCipher(key)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                nonce, plaintext = iv(), os.urandom(1000)
                sealed = cipher.seal(iv=nonce, plaintext=plaintext, aad=b"a")
                assert software.open(iv=nonce, ciphertext=sealed, aad=b"a") == plaintext
                assert cipher.open(iv=nonce, ciphertext=sealed, aad=b"a") == plaintext
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- provisioning bundles ---------------------------------------------------------------


def bundle(**changes: Any) -> dict[str, Any]:
    good = {"uid": "pole-0042", "kid_hex": "0123456789abcdef", "alg": "A256GCM",
            "key_hex": os.urandom(32).hex()}  # fmt: skip
    good.update(changes)
    return {k: v for k, v in good.items() if v is not None}


def test_import_bundle(store: KeyStore) -> None:
    data = bundle(kid_hex="0123456789ABCDEF")
    cipher = import_bundle(store, data)
    assert cipher.alg == A256
    label = key_label_for_kid(bytes.fromhex("0123456789abcdef"))
    assert label == "citywatch-0123456789abcdef"
    assert store.has_key(label)
    nonce = iv()
    software = AesGcmCipher(bytes.fromhex(data["key_hex"]))
    assert cipher.seal(iv=nonce, plaintext=b"x", aad=b"") == software.seal(
        iv=nonce, plaintext=b"x", aad=b""
    )
    import_bundle(store, data)  # re-running provisioning is harmless
    with pytest.raises(KeyExists):
        import_bundle(store, {**data, "key_hex": os.urandom(32).hex()})
    store.delete_key(label)


def test_import_a128_bundle(store: KeyStore) -> None:
    data = bundle(kid_hex=os.urandom(8).hex(), alg="A128GCM", key_hex=os.urandom(16).hex())
    assert import_bundle(store, data).alg == A128


def test_a256_bundle_into_an_aes_128_only_store(make_store: MakeStore) -> None:
    store = make_store(max_key_bits=128)
    with pytest.raises(UnsupportedKey, match="provision this device with an A128GCM key"):
        import_bundle(store, bundle(kid_hex=os.urandom(8).hex()))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kid_hex": "0123456789abcdeg"}, "'kid_hex' must be a string of hex digit pairs"),
        ({"kid_hex": "0123456789abcd"}, "'kid_hex' must be 16 hex digits, not 14"),
        ({"kid_hex": "0x23456789abcdef"}, "'kid_hex' must be a string of hex digit pairs"),
        ({"kid_hex": "01 23456789abcde"}, "'kid_hex' must be a string of hex digit pairs"),
        ({"kid_hex": 81985529216486895}, "'kid_hex' must be a string of hex digit pairs"),
        ({"key_hex": "zz" * 32}, "'key_hex' must be a string of hex digit pairs"),
        ({"key_hex": "abc"}, "'key_hex' must be a string of hex digit pairs"),
        ({"key_hex": "ab" * 24}, "'key_hex' must be 32 or 64 hex digits, not 48"),
        ({"alg": "A128GCM"}, "alg A128GCM takes a 16-byte key, but key_hex holds 32 bytes"),
        ({"alg": "A256GCM", "key_hex": "ab" * 16}, "alg A256GCM takes a 32-byte key, but"),
        ({"alg": "A192GCM"}, "'alg' is 'A192GCM', not 'A128GCM' or 'A256GCM'"),
        ({"alg": 3}, "'alg' is 3, not 'A128GCM' or 'A256GCM'"),
        ({"alg": ["A256GCM"]}, r"'alg' is \['A256GCM'\], not 'A128GCM'"),
        ({"uid": ""}, "'uid' must be a non-empty string"),
        ({"uid": 42}, "'uid' must be a non-empty string"),
        ({"key_hex": None}, r"missing \['key_hex'\]"),
        ({"district": "north"}, r"unknown \['district'\]"),
    ],
)
def test_import_bundle_rejects_bad_bundles(
    store: KeyStore, changes: dict[str, Any], message: str
) -> None:
    data = bundle(**changes)
    with pytest.raises(InvalidBundle, match=message) as caught:
        import_bundle(store, data)
    key_hex = data.get("key_hex")
    if isinstance(key_hex, str) and len(key_hex) > 8:
        assert key_hex not in str(caught.value)  # a key is never echoed in an error
    assert not store.has_key("citywatch-0123456789abcdef")


def test_bundle_is_not_a_json_object() -> None:
    with pytest.raises(InvalidBundle, match="JSON object, not list"):
        ProvisioningBundle.parse([])  # type: ignore[arg-type]


def test_parsed_bundle_hides_the_key() -> None:
    data = bundle()
    parsed = ProvisioningBundle.parse(data)
    assert parsed.uid == "pole-0042"
    assert parsed.kid == bytes.fromhex("0123456789abcdef")
    assert parsed.alg == A256
    assert key_label_for_kid(parsed.kid) == "citywatch-0123456789abcdef"
    assert data["key_hex"] not in repr(parsed)
    assert parsed.key.hex() not in repr(parsed)


# -- PKCS#11 only: what the token itself says ----------------------------------------------


@pytest.fixture
def token_session(softhsm_keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken) -> Iterator[Any]:
    """A raw python-pkcs11 session on the token, beside an open key store.

    It does not log in: login belongs to the process, and the store has logged it in."""
    session = (
        pkcs11.lib(softhsm_token.module).get_token(token_label=softhsm_token.label).open(rw=True)
    )
    yield session
    session.close()


def raw_key(session: Any, label: str) -> Any:
    return session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)


@pytest.mark.parametrize("how", ["import", "generate"])
def test_key_cannot_leave_the_token(
    softhsm_keystore: Pkcs11KeyStore, token_session: Any, how: str
) -> None:
    label = new_label()
    if how == "import":
        softhsm_keystore.import_key(label, os.urandom(32))
    else:
        softhsm_keystore.generate_key(label, A256)
    key = raw_key(token_session, label)

    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.TOKEN] is True
    assert key[Attribute.PRIVATE] is True
    assert key[Attribute.VALUE_LEN] == 32
    assert key[Attribute.ENCRYPT] is True and key[Attribute.DECRYPT] is True
    for use in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE):
        assert key[use] is False, use
    with pytest.raises(p11.AttributeSensitive):
        key[Attribute.VALUE]

    # Nor can it be wrapped out under a key of our own.
    wrapping = token_session.generate_key(
        KeyType.AES, 256, label=new_label(), capabilities=MechanismFlag.WRAP
    )
    with pytest.raises(p11.KeyUnextractable):
        wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP)


def test_keys_are_token_objects_that_outlive_the_store(softhsm_token: SoftHsmToken) -> None:
    label, key = new_label(), os.urandom(32)
    with Pkcs11KeyStore(*softhsm_token) as first:
        first.import_key(label, key)
    with Pkcs11KeyStore(*softhsm_token) as second:
        nonce = iv()
        sealed = second.cipher(label).seal(iv=nonce, plaintext=b"x", aad=b"")
        assert AesGcmCipher(key).open(iv=nonce, ciphertext=sealed, aad=b"") == b"x"
        second.delete_key(label)


def test_an_extractable_key_is_refused(
    softhsm_keystore: Pkcs11KeyStore, token_session: Any
) -> None:
    label = new_label()
    token_session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: os.urandom(32),
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: False,
            Attribute.EXTRACTABLE: True,
        }
    )
    with pytest.raises(KeyNotProtected, match="can be read out of the token"):
        softhsm_keystore.cipher(label)
    softhsm_keystore.delete_key(label)


def test_two_stores_on_one_token_share_the_login(softhsm_token: SoftHsmToken) -> None:
    first = Pkcs11KeyStore(*softhsm_token)
    second = Pkcs11KeyStore(*softhsm_token)
    label = new_label()
    cipher = second.import_key(label, os.urandom(16))
    first.close()  # must not log the second store out
    assert second.has_key(label)
    cipher.seal(iv=iv(), plaintext=b"x", aad=b"")
    second.delete_key(label)
    second.close()


def test_detected_key_length_limit(softhsm_keystore: Pkcs11KeyStore) -> None:
    assert softhsm_keystore.max_key_bits == 256  # SoftHSM2 reports AES-GCM keys up to 32 bytes


def test_max_key_bits_must_be_128_or_256(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(ValueError, match="max_key_bits"):
        Pkcs11KeyStore(*softhsm_token, max_key_bits=192)


def test_wrong_pin(softhsm_tokens: dict[str, SoftHsmToken]) -> None:
    spare = softhsm_tokens["citywatch-spare"]  # nobody is logged in: C_Login checks the PIN
    with pytest.raises(WrongPin) as caught:
        Pkcs11KeyStore(spare.module, spare.label, spare.pin + "0")
    message = str(caught.value)
    assert "'citywatch-spare'" in message and "refused the user PIN" in message
    assert "keystore.pin" in message
    assert spare.pin not in message
    # The right PIN still works (SoftHSM2 does not lock the token).
    Pkcs11KeyStore(*spare).close()


def test_wrong_pin_on_a_token_this_process_is_logged_in_to(
    softhsm_keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken
) -> None:
    with pytest.raises(WrongPin, match="refused the user PIN"):
        Pkcs11KeyStore(softhsm_token.module, softhsm_token.label, "not-the-pin")


def test_missing_token(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(TokenNotFound) as caught:
        Pkcs11KeyStore(softhsm_token.module, "no-such-token", softhsm_token.pin)
    message = str(caught.value)
    assert "no token labelled 'no-such-token'" in message
    assert "'citywatch-test'" in message  # lists what is there
    assert "softhsm2-util --init-token" in message and "keystore.token_label" in message


def test_missing_module(tmp_path: Path) -> None:
    module = str(tmp_path / "libsofthsm2.so")
    with pytest.raises(KeyStoreModuleMissing) as caught:
        Pkcs11KeyStore(module, "citywatch-test", "1234")
    assert str(caught.value).startswith(f"PKCS#11 module {module} not found: install softhsm2")
    assert "keystore.module" in str(caught.value)


def test_a_file_that_is_not_a_pkcs11_module(tmp_path: Path) -> None:
    module = tmp_path / "libnot-a-module.so"
    module.write_bytes(b"\x7fELF but not really")
    with pytest.raises(KeyStoreModuleInvalid, match="failed to load or initialise"):
        Pkcs11KeyStore(module, "citywatch-test", "1234")


def test_error_tree() -> None:
    for error in (WrongPin, TokenNotFound, KeyStoreModuleMissing, KeyStoreModuleInvalid):
        assert issubclass(error, KeyStoreUnavailable)
    for misuse in (KeyNotFound, KeyExists, UnsupportedKey, KeyStoreClosed):
        assert issubclass(misuse, KeyStoreError) and not issubclass(misuse, KeyStoreUnavailable)
    assert issubclass(KeyStoreError, HardwareError)
