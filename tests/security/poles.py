"""A pole on a real broker as an attacker drives it: a plain MQTT client (paho) with the
pole's key, which publishes whatever bytes it likes on its uplink and reads what the
server answers. Optional TLS with a client certificate, for the production broker."""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt

import protocol as p
from protocol._crypto import seal_message

PREFIX = "citywatch/v1"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Pole:
    """One MQTT client. ``kid``/``key``: the pole's protocol identity, or none for a
    bare client. ``client_id`` defaults to the kid in hex (protocol.md section 5)."""

    host: str
    port: int
    kid: bytes = b""
    key: bytes = b""
    uid: str = ""
    client_id: str = ""
    tls: tuple[Path, Path, Path] | None = None  # CA, client certificate, client key
    will: tuple[str, bytes] | None = None
    received: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    disconnects: int = 0
    connected: threading.Event = field(default_factory=threading.Event)
    granted: list[int] = field(default_factory=list)
    _subscribed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client_id = self.client_id or self.kid.hex()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if self.tls is not None:
            ca, cert, key = self.tls
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.load_cert_chain(str(cert), str(key))
            c.tls_set_context(ctx)
        if self.will is not None:
            c.will_set(self.will[0], self.will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(0.1, 0.5)
        self.client = c

    @property
    def down(self) -> str:
        return f"{PREFIX}/{self.kid.hex()}/down"

    @property
    def up(self) -> str:
        return f"{PREFIX}/{self.kid.hex()}/up"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        if self.connected.is_set():
            self.disconnects += 1
        self.connected.clear()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.put((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        self.granted = [int(getattr(rc, "value", rc)) for rc in codes]
        self._subscribed.set()

    def start(self, *, timeout: float = 10.0, subscribe_down: bool = True) -> Pole:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"{self.client_id}: not connected within {timeout} s")
        if subscribe_down and self.kid:
            self.subscribe(self.down)
        return self

    def subscribe(self, topic: str, *, timeout: float = 5.0) -> list[int]:
        """Subscribe and return the broker's granted codes (128 = refused)."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self.granted

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- the protocol, by hand --------------------------------------------------------

    def publish(self, data: bytes, topic: str | None = None, *, retain: bool = False) -> None:
        self.client.publish(topic or self.up, data, qos=1, retain=retain)

    def craft(
        self, mtype: int, plaintext: dict[str, Any] | bytes, protected: bytes | None = None
    ) -> bytes:
        """Seal any plaintext (not validated) with this pole's key."""
        body = plaintext if isinstance(plaintext, bytes) else cbor2.dumps(plaintext, canonical=True)
        return seal_message(
            cipher=p.AesGcmCipher(self.key),
            kid=self.kid,
            type=mtype,
            plaintext=body,
            iv=os.urandom(12),
        )

    def next_message(
        self, *, timeout: float, topic: str | None = None, accepts: tuple[int, ...] = (1, 4, 6, 9)
    ) -> p.Message | None:
        """The next protocol message on ``topic`` (the downlink), or None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, data = self.received.get(timeout=left)
            except queue.Empty:
                return None
            if t != (topic or self.down):
                continue
            try:
                return p.open_message(
                    data,
                    role="device",
                    accepts=accepts,
                    key_for=lambda _k: p.AesGcmCipher(self.key),
                    limits=p.Limits(),
                ).message
            except p.RemoteProtocolError:
                continue
        return None

    def expect(
        self, cls: type[p.Message], *, timeout: float = 10.0, td: int | None = None
    ) -> p.Message:
        """The next message of class ``cls`` (for ``td`` if given); others are skipped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            m = self.next_message(timeout=left)
            if m is None:
                break
            if isinstance(m, cls) and (td is None or getattr(m, "td", None) == td):
                return m
        raise TimeoutError(f"{self.uid or self.client_id}: no {cls.__name__} within {timeout} s")

    def hello(self, *, td: int | None = None) -> bytes:
        return self.craft(3, {"td": now_ms() if td is None else td, "uid": self.uid})

    def open_contact(self, *, timeout: float = 10.0) -> tuple[int, bytes]:
        """C1 and its C2: T_D and the ticket."""
        td = now_ms()
        self.publish(self.hello(td=td))
        c2 = self.expect(p.C2Ready, timeout=timeout, td=td)
        assert isinstance(c2, p.C2Ready)
        return td, c2.tk

    def contacts(self, n: int, *, timeout: float) -> int:
        """C1s sent one after another; how many got their C2 (each waits ``timeout`` s)."""
        answered = 0
        for i in range(n):
            td = now_ms() + i
            self.publish(self.hello(td=td))
            try:
                self.expect(p.C2Ready, td=td, timeout=timeout)
                answered += 1
            except TimeoutError:
                pass
        return answered

    def report(self, td: int, tk: bytes, photo: bytes, **over: Any) -> bytes:
        """A C3 plaintext built by hand (so any field may be out of range)."""
        m = {
            "td": td,
            "uid": self.uid,
            "tk": tk,
            "cid": os.urandom(16),
            "gc": {"lat": 52.2297, "lon": 21.0122, "alt": None, "acc": 5.0, "src": "gps"},
            "pf": photo,
            "sc": 0.9,
            "lb": "fall",
            "at": now_ms(),
        }
        m.update(over)
        return self.craft(5, m)

    def drain(self) -> None:
        while not self.received.empty():
            self.received.get_nowait()


def pole_for(bundle: Any, host: str, port: int, **kw: Any) -> Pole:
    return Pole(host=host, port=port, kid=bundle.kid, key=bundle.key, uid=bundle.uid, **kw)
