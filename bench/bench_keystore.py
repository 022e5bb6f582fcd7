"""Seal+open throughput of the key stores: software (``cryptography``) against a SoftHSM2
token through PKCS#11, for a 64-byte message (C1/C2-sized) and a 300 KB one (a C3 photo).

    .venv/bin/python bench/bench_keystore.py [--seconds 1.0] [--alg A256GCM]

Prints figures only; it never passes or fails on time. It creates its own temporary
SoftHSM2 token and removes it afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from rich.console import Console
from rich.table import Table

from hardware import (
    KeyStore,
    Pkcs11KeyStore,
    SoftwareKeyStore,
    create_softhsm_tokens,
    find_softhsm_module,
)
from protocol import ALG_NAMES

SIZES = {"64 B": 64, "300 KB": 300_000}


def seal_open_rate(store: KeyStore, *, alg: int, size: int, seconds: float) -> float:
    """Seal+open operations per second with a fresh key of ``alg`` and a ``size`` message."""
    cipher = store.generate_key(f"bench-{os.urandom(6).hex()}", alg)
    plaintext, aad = os.urandom(size), os.urandom(40)  # 40 B: about a protected header
    ivs = [os.urandom(12) for _ in range(64)]  # made outside the timed loop
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        iv = ivs[count % len(ivs)]
        cipher.open(iv=iv, ciphertext=cipher.seal(iv=iv, plaintext=plaintext, aad=aad), aad=aad)
        count += 1
        now = time.perf_counter()
        if now >= deadline and count >= 3:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--alg", choices=sorted(ALG_NAMES.values()), default="A256GCM")
    args = parser.parse_args()
    alg = next(number for number, name in ALG_NAMES.items() if name == args.alg)
    console = Console()

    with tempfile.TemporaryDirectory(prefix="citywatch-bench-") as folder:
        stores: dict[str, KeyStore] = {"software": SoftwareKeyStore()}
        module = find_softhsm_module()
        if module is None:
            console.print("[yellow]SoftHSM2 not installed: software figures only[/yellow]")
        else:
            conf, (token,) = create_softhsm_tokens(folder, ["citywatch-bench"], module=module)
            # Before the module is first loaded: SoftHSM2 reads it only in C_Initialize.
            os.environ["SOFTHSM2_CONF"] = str(conf)
            stores["SoftHSM2"] = Pkcs11KeyStore(*token)

        rates = {
            (name, size): seal_open_rate(store, alg=alg, size=size, seconds=args.seconds)
            for name, store in stores.items()
            for size in SIZES.values()
        }
        for store in stores.values():
            store.close()

    table = Table(
        title=f"seal+open per second, {args.alg}, {args.seconds:g} s each "
        f"({platform.machine()}, Python {platform.python_version()})"
    )
    table.add_column("message")
    for name in stores:
        table.add_column(f"{name} ops/s", justify="right")
        table.add_column(f"{name} MB/s", justify="right")
    if len(stores) == 2:
        table.add_column("software / SoftHSM2", justify="right")
    for label, size in SIZES.items():
        row = [label]
        for name in stores:
            rate = rates[name, size]
            row += [f"{rate:,.0f}", f"{rate * size * 2 / 1e6:,.1f}"]  # seal and open: 2x
        if len(stores) == 2:
            row.append(f"{rates['software', size] / rates['SoftHSM2', size]:.1f}x")
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
