"""What an attacker with the token's PIN (a process on the pole or the server host that
can open the token) can do with CityWatch's keys in a real SoftHSM2 token: use them for
AES-GCM, as the key store does, and nothing else. Before: the keys were left MODIFIABLE
and COPYABLE, DERIVE could be switched on, and raw AES-ECB (an oracle on the key) was
allowed; the value itself never left the token."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from hardware import Pkcs11KeyStore, SoftHsmToken

A256 = 3


@pytest.fixture
def token_session(softhsm_keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken) -> Iterator[Any]:
    """The attacker's own session on the token (the store's login covers it)."""
    session = (
        pkcs11.lib(softhsm_token.module).get_token(token_label=softhsm_token.label).open(rw=True)
    )
    yield session
    session.close()


@pytest.fixture(params=["import", "generate"])
def key(
    request: pytest.FixtureRequest, softhsm_keystore: Pkcs11KeyStore, token_session: Any
) -> Any:
    label = f"attack-{uuid.uuid4().hex[:12]}"
    if request.param == "import":
        softhsm_keystore.import_key(label, os.urandom(32))
    else:
        softhsm_keystore.generate_key(label, A256)
    return token_session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)


def test_key_attributes_cannot_be_changed(key: Any) -> None:
    assert key[Attribute.MODIFIABLE] is False
    for attribute, value in (
        (Attribute.DERIVE, True),
        (Attribute.SIGN, True),
        (Attribute.WRAP, True),
        (Attribute.EXTRACTABLE, True),
        (Attribute.LABEL, "renamed"),
    ):
        with pytest.raises(p11.PKCS11Error):
            key[attribute] = value
    assert key[Attribute.DERIVE] is False and key[Attribute.EXTRACTABLE] is False


def test_key_cannot_be_copied(key: Any) -> None:
    assert key[Attribute.COPYABLE] is False
    with pytest.raises(p11.PKCS11Error):
        key.copy({Attribute.LABEL: "copy", Attribute.DERIVE: True})


def test_key_allows_only_aes_gcm(key: Any, softhsm_keystore: Pkcs11KeyStore) -> None:
    assert key[Attribute.ALLOWED_MECHANISMS] == [Mechanism.AES_GCM]
    for mechanism in (Mechanism.AES_ECB, Mechanism.AES_CBC, Mechanism.AES_CTR):
        param = None if mechanism == Mechanism.AES_ECB else bytes(16)
        with pytest.raises(p11.PKCS11Error):
            key.encrypt(bytes(16), mechanism=mechanism, mechanism_param=param)
    # ... while the store's own use works.
    cipher = softhsm_keystore.cipher(key[Attribute.LABEL])
    iv = os.urandom(12)
    sealed = cipher.seal(iv=iv, plaintext=b"coords", aad=b"aad")
    assert cipher.open(iv=iv, ciphertext=sealed, aad=b"aad") == b"coords"
