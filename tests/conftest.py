"""Fixtures shared by every test: real services (tests/support/fixtures.py) and real
SoftHSM2 tokens. Nothing here is a mock.

SoftHSM2 reads ``SOFTHSM2_CONF`` and scans its tokens only when a process first loads
it, and python-pkcs11 loads a module once per process. So one session-wide token
directory holds every token the suite uses, all created before any test opens one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from hardware import Pkcs11KeyStore, SoftHsmToken, create_softhsm_tokens, find_softhsm_module

pytest_plugins = ["tests.support.fixtures"]

SOFTHSM_TOKEN_LABELS = (
    "citywatch-test",  # softhsm_token: the general-purpose token
    "citywatch-device",
    "citywatch-server",
    "citywatch-enc",
    "citywatch-spare",  # never opened by a fixture: for tests of the login itself
)
"""Tokens of the session; ask for one through ``softhsm_tokens[label]``."""


def softhsm_module_path() -> str:
    """Path of libsofthsm2.so; skips the test, saying why, if SoftHSM2 is not installed."""
    module = find_softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip(
            "SoftHSM2 is not installed (libsofthsm2.so or softhsm2-util missing): "
            "apt install softhsm2, or set SOFTHSM2_MODULE to libsofthsm2.so"
        )
    return module


@pytest.fixture(scope="session")
def softhsm_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SoftHsmToken]]:
    """Every SoftHSM2 token of the session by label (``SOFTHSM_TOKEN_LABELS``), each with
    a random user PIN, in a session temporary folder that ``SOFTHSM2_CONF`` points to."""
    module = softhsm_module_path()
    conf, tokens = create_softhsm_tokens(
        tmp_path_factory.mktemp("softhsm2"), SOFTHSM_TOKEN_LABELS, module=module
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOFTHSM2_CONF", str(conf))
        yield {token.label: token for token in tokens}


@pytest.fixture(scope="session")
def softhsm_token(softhsm_tokens: dict[str, SoftHsmToken]) -> SoftHsmToken:
    """A SoftHSM2 token for the session: ``(module_path, token_label, pin)``.

    Shared by many tests: give keys unique labels."""
    return softhsm_tokens["citywatch-test"]


@pytest.fixture
def softhsm_keystore(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11KeyStore]:
    """A ``Pkcs11KeyStore`` on ``softhsm_token``, closed after the test."""
    with Pkcs11KeyStore(*softhsm_token) as store:
        yield store
