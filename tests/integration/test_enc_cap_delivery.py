"""CAP 1.2 sent to recipients by ``citywatch enc run``: a real HTTP receiver on loopback
that refuses for a while (503, then the ENC is restarted while it still refuses, then it
accepts): every message arrives, once, in order, valid against the OASIS schema, with its
``references`` chain and a photo ``uri`` the recipient fetches with its token. The Atom
feed and the EIDO export over the real HTTP API."""

from __future__ import annotations

import http.server
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.test_enc_dashboard import SCHEMA_FILE, Operator, add_operators
from tests.integration.test_enc_endpoint import EncProcess, free_port, make_n1, new_id

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2", "atom": "http://www.w3.org/2005/Atom"}
AUTH = "Bearer recipient-secret-1"
FEED_TOKEN = "feed-reader-secret-2"


class Receiver:
    """A dispatch centre's CAP endpoint: answers 503 while ``refusing`` (or for the
    next ``fail_next`` requests), else 200 and keeps what it got."""

    def __init__(self) -> None:
        self.refusing = True
        self.fail_next = 0
        self.accepted: list[bytes] = []
        self.refused = 0
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.auth.add(self.headers.get("Authorization", ""))
                    ok = (
                        not outer.refusing
                        and outer.fail_next == 0
                        and self.headers.get("Content-Type") == "application/cap+xml"
                    )
                    if ok:
                        outer.accepted.append(body)
                    else:
                        outer.refused += 1
                        outer.fail_next = max(0, outer.fail_next - 1)
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cap"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _enc(workdir: Path, receiver: Receiver) -> EncProcess:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    for name, secret in (("dispatch.auth", AUTH), ("feed.token", FEED_TOKEN)):
        (workdir / name).write_text(secret + "\n")
        (workdir / name).chmod(0o600)
    toml = f"""
[cap]
public_url = "http://127.0.0.1:{port}"
retry_first_seconds = 0.2
retry_max_seconds = 0.5
feed_token_file = "feed.token"
[cap.recipients.dispatch]
url = "{receiver.url}"
authorization_file = "dispatch.auth"
timeout_seconds = 5
"""
    e = EncProcess(workdir, extra_toml=toml, port=port)
    add_operators(e, ("olga", "operator"), ("sue", "supervisor"))
    return e


def _wait(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _own(root: ET.Element) -> str:
    return ",".join(
        root.findtext(f"cap:{k}", namespaces=NS) or "" for k in ("sender", "identifier", "sent")
    )


def test_every_message_arrives_once_in_order_across_refusals_and_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
    e = _enc(tmp_path / "enc", receiver).start()
    try:
        first, second = new_id(), new_id()
        for inc, label in ((first, "fight"), (second, "person_down")):
            assert e.post(make_n1(e.notifier(), inc, label=label, score=0.9)).status_code == 200
        olga, sue = Operator(e.url), Operator(e.url)
        olga.login("olga")
        sue.login("sue")

        def act(who: Operator, inc: str, **body: str) -> None:
            r = who.http.post(
                f"/api/alerts/{inc}/actions", json=body, headers={"X-CSRF-Token": who.csrf()}
            )
            assert r.status_code == 200, r.text

        act(olga, first, action="dispatch", unit="Police 3")
        act(olga, second, action="dismiss", reason="a child playing")
        _wait("refused sends", lambda: receiver.refused >= 3)
        # Stopped while the recipient refuses: what is queued is in the database.
        e.stop()
        assert receiver.accepted == []
        e.start()
        act(sue, second, action="reopen", reason="the caller insists")
        act(sue, second, action="acknowledge")  # (makes no CAP message)
        act(sue, second, action="close", resolution="nobody_found")
        with receiver.lock:
            receiver.refusing = False
            receiver.fail_next = 2  # and two more refusals before it takes anything
        expected = 6  # 2 alerts, dispatch, dismiss, reopen, close
        _wait("every message", lambda: len(receiver.accepted) >= expected)
        time.sleep(1.5)  # anything sent twice would have arrived by now
        e.stop()
    finally:
        e.stop()
    assert "Traceback" not in e.log.read_text()
    assert receiver.auth == {AUTH}
    roots = [ET.fromstring(b) for b in receiver.accepted]
    for b in receiver.accepted:
        schema.validate(b)
    ids = [r.findtext("cap:identifier", namespaces=NS) for r in roots]
    assert len(ids) == len(set(ids)) == expected, ids  # nothing lost, nothing twice
    by_incident: dict[str, list[ET.Element]] = {}
    for r in roots:
        inc = r.findtext(
            "cap:info/cap:parameter[cap:valueName='CITYWATCH-INCIDENT']/cap:value", namespaces=NS
        )
        by_incident.setdefault(str(inc), []).append(r)
    assert [r.findtext("cap:msgType", namespaces=NS) for r in by_incident[first]] == [
        "Alert",
        "Update",
    ]
    msgs = by_incident[second]
    assert [r.findtext("cap:msgType", namespaces=NS) for r in msgs] == [
        "Alert",
        "Cancel",
        "Update",
        "Update",
    ]
    # Each update cites the original and every update before it, oldest first.
    for n, r in enumerate(msgs[1:], start=1):
        assert r.findtext("cap:references", namespaces=NS).split() == [_own(m) for m in msgs[:n]]
    assert msgs[-1].findtext("cap:note", namespaces=NS) == (
        "Closed (sue): Nobody found at the place"
    )

    # The photo: fetched by the recipient with the token in the message, nothing else.
    e.start()
    try:
        uri = msgs[0].findtext("cap:info/cap:resource/cap:uri", namespaces=NS)
        assert uri and "token=" in uri
        got = httpx.get(uri, timeout=10)
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        digest = msgs[0].findtext("cap:info/cap:resource/cap:digest", namespaces=NS)
        import hashlib

        assert hashlib.sha1(got.content).hexdigest() == digest
        u = urlsplit(uri)
        forged = f"{e.url}{u.path}?{u.query[:-2]}xx"
        other = f"{e.url}/cap/photo/{first}.jpg?{u.query}"  # another alert's token
        for bad in (forged, other, f"{e.url}{u.path}", f"{e.url}{u.path}?token=9999999999.x"):
            assert httpx.get(bad, timeout=10).status_code == 403, bad
        sue = Operator(e.url)
        sue.login("sue")
        trail = sue.http.get(f"/api/alerts/{second}").json()["audit"]
        assert [(t["actor"], t["detail"]) for t in trail if t["action"] == "photo_viewed"] == [
            ("cap-recipient", {"view": "cap"})
        ]
        # The alert page says where its messages went.
        page = sue.http.get(f"/alerts/{second}").text
        assert page.count("to dispatch: delivered") == 4
    finally:
        e.stop()


def test_atom_feed_and_eido_export(tmp_path: Path, receiver: Receiver) -> None:
    schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
    e = _enc(tmp_path / "enc", receiver).start()
    try:
        inc = new_id()
        assert e.post(make_n1(e.notifier(), inc, label="fight", score=0.9)).status_code == 200
        olga = Operator(e.url)
        olga.login("olga")
        h = {"X-CSRF-Token": olga.csrf()}
        for body in (
            {"action": "acknowledge"},
            {"action": "note", "comment": "two men, one on the ground"},
            {"action": "dispatch", "unit": "Police 3"},
            {"action": "close", "resolution": "help_arrived"},
        ):
            assert (
                olga.http.post(f"/api/alerts/{inc}/actions", json=body, headers=h).status_code
                == 200
            )

        def feed() -> httpx.Response:
            return httpx.get(
                f"{e.url}/cap/feed.atom",
                timeout=10,
                headers={"Authorization": f"Bearer {FEED_TOKEN}"},
            )

        _wait("the feed", lambda: feed().text.count("<entry>") >= 3)
        assert httpx.get(f"{e.url}/cap/feed.atom", timeout=10).status_code == 401
        assert (
            httpx.get(
                f"{e.url}/cap/feed.atom", timeout=10, headers={"Authorization": "Bearer wrong"}
            ).status_code
            == 401
        )
        r = feed()
        assert r.headers["content-type"].startswith("application/atom+xml")
        root = ET.fromstring(r.content)
        assert root.tag == "{http://www.w3.org/2005/Atom}feed"
        entries = root.findall("atom:entry", NS)
        types = []
        for entry in entries:
            assert entry.findtext("atom:id", namespaces=NS).startswith("urn:citywatch:cap:")
            cap = entry.find("atom:content/cap:alert", NS)
            schema.validate(ET.tostring(cap))
            types.append(cap.findtext("cap:msgType", namespaces=NS))
            link = entry.find("atom:link[@rel='alternate']", NS).get("href")
            same = olga.http.get(urlsplit(link).path)  # an operator's login reads it too
            assert same.status_code == 200
            assert ET.fromstring(same.content).findtext(
                "cap:identifier", namespaces=NS
            ) == cap.findtext("cap:identifier", namespaces=NS)
        assert types == ["Update", "Update", "Alert"]  # newest first

        # EIDO: an operator's export, checked against the schema in enc/schemas/.
        from enc._eido import eido_schema

        doc = olga.http.get(f"/alerts/{inc}/eido.json")
        assert doc.status_code == 200
        eido = doc.json()
        jsonschema.Draft202012Validator(eido_schema()).validate(eido)
        incident = eido["incidentComponent"][0]
        assert incident["localIncidentIdentifier"] == inc
        assert incident["incidentTypeCommonRegistryText"] == ["Assault"]
        assert incident["incidentStatusCommonRegistryText"] == ["Closed"]
        assert eido["dispositionComponent"][0]["dispositionCommonRegistryText"] == ("help_arrived")
        notes = [n["noteText"] for n in eido["notesComponent"]]
        assert "two men, one on the ground" in notes and "Dispatched Police 3" in notes
        lon, lat = eido["locationComponent"][0]["locationByValue"]["coordinates"]
        assert (round(lat, 4), round(lon, 4)) == (52.2297, 21.0122)
        assert {a["agentIdentifier"] for a in eido["agentComponent"]} == {"olga"}
        assert (
            httpx.get(
                f"{e.url}/alerts/{inc}/eido.json", timeout=10, follow_redirects=False
            ).status_code
            == 303
        )  # needs a login
        # The schema refuses what the export must not be.
        broken = json.loads(json.dumps(eido))
        del broken["incidentComponent"][0]["incidentTrackingIdentifier"]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(eido_schema()).validate(broken)
    finally:
        e.stop()
    assert "Traceback" not in e.log.read_text()


def test_the_update_for_a_linked_report_carries_that_reports_photo(
    tmp_path: Path, receiver: Receiver
) -> None:
    import hashlib

    from tests.integration.test_enc_endpoint import jpeg
    from tests.integration.test_enc_linked_reports import HERE, send

    schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
    receiver.refusing = False
    e = _enc(tmp_path / "enc", receiver).start()
    try:
        inc, rep = new_id(), new_id()
        alert_photo, report_photo = jpeg((160, 120)), jpeg((200, 100), quality=60)
        assert alert_photo != report_photo
        notifier = e.notifier()
        n1 = make_n1(notifier, inc, label="person_down", score=0.9, photo=alert_photo)
        assert e.post(n1).status_code == 200
        n3 = notifier.linked_report(
            incident_id=inc,
            report_id=rep,
            coords=HERE,
            photo=report_photo,
            score=0.92,
            label="fight",
            captured_at=int(time.time() * 1000) - 1000,
            device_uid="pole-78",
            now=int(time.time() * 1000),
        )
        assert send(e, n3).status_code == 200
        _wait("the alert and its update", lambda: len(receiver.accepted) >= 2)
        update = ET.fromstring(receiver.accepted[1])
        schema.validate(receiver.accepted[1])
        assert update.findtext("cap:msgType", namespaces=NS) == "Update"
        res = update.findall("cap:info/cap:resource", NS)
        # The news first: the fused report's photo, then the alert's own.
        assert [r.findtext("cap:resourceDesc", namespaces=NS) for r in res] == [
            "Photo of the fused report (Fight) from street-pole device pole-78",
            "Photo from the street-pole camera",
        ]
        for r, photo in zip(res, (report_photo, alert_photo), strict=True):
            assert r.findtext("cap:digest", namespaces=NS) == hashlib.sha1(photo).hexdigest()
            assert r.findtext("cap:size", namespaces=NS) == str(len(photo))
            got = httpx.get(str(r.findtext("cap:uri", namespaces=NS)), timeout=10)
            assert got.status_code == 200 and got.content == photo
        # A report's token opens that report's photo only.
        u = urlsplit(str(res[0].findtext("cap:uri", namespaces=NS)))
        for bad in (
            f"{e.url}/cap/photo/{inc}.jpg?{u.query}",
            f"{e.url}/cap/photo/{inc}/{new_id()}.jpg?{u.query}",
            f"{e.url}{u.path}?{u.query[:-2]}xx",
        ):
            assert httpx.get(bad, timeout=10).status_code == 403, bad
        sue = Operator(e.url)
        sue.login("sue")
        trail = sue.http.get(f"/api/alerts/{inc}").json()["audit"]
        assert [t["detail"] for t in trail if t["action"] == "photo_viewed"] == [
            {"view": "cap", "report": rep},
            {"view": "cap"},
        ]
        # The export on the dashboard carries the same two photos.
        xml = sue.http.get(f"/alerts/{inc}/cap.xml").content
        digests = [
            r.findtext("cap:digest", namespaces=NS)
            for r in ET.fromstring(xml).findall("cap:info/cap:resource", NS)
        ]
        assert digests == [hashlib.sha1(p).hexdigest() for p in (report_photo, alert_photo)]
    finally:
        e.stop()
    assert "Traceback" not in e.log.read_text()
