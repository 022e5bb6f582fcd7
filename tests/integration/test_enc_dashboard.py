"""The operators' dashboard over real HTTP against ``citywatch enc run``: login, CSRF,
lock-out, expired sessions, roles, the live feed, photo audit, CAP export, hostile and
oversized requests, and schemathesis against the JSON API's OpenAPI schema."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import xmlschema
from hypothesis import HealthCheck, given, settings
from sqlalchemy import create_engine, update

from enc._schema import SessionRow
from tests.integration.test_enc_endpoint import CITYWATCH, EncProcess, make_n1, new_id

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "cap" / "CAP-v1.2.xsd"
PW = "night shift 2026"
DASHBOARD_TOML = """
[dashboard]
lockout_failures = 3
lockout_minutes = 5
max_form_bytes = 8192
[cap]
sender = "enc.test@city.invalid"
"""


def add_operators(e: EncProcess, *names_roles: tuple[str, str]) -> None:
    """Accounts made through the library, with a cheaper argon2id than the ENC's own so
    that logins in the tests are quick (``add_operator`` goes through the CLI)."""
    import time as _time

    from argon2 import PasswordHasher

    import enc

    config = enc.load_config(e.config)
    store = enc.AlertStore.open(config.database_url)
    try:
        ops = enc.OperatorDirectory(
            store,
            config.dashboard,
            hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        )
        for name, role in names_roles:
            ops.add(name, PW, role, now=_time.time_ns() // 1_000_000, by="test")
    finally:
        store.close()


def add_operator(e: EncProcess, name: str, role: str = "operator", pw: str = PW) -> None:
    subprocess.run(
        [
            CITYWATCH,
            "enc",
            "operator",
            "add",
            "--config",
            str(e.config),
            name,
            "--role",
            role,
            "--password-stdin",
        ],
        input=pw + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


class Operator:
    """A browser-less operator: an HTTP client with the dashboard's cookies."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=15)

    def login(self, name: str, pw: str = PW) -> httpx.Response:
        form = self.http.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token, form.text
        return self.http.post(
            "/login", data={"username": name, "password": pw, "csrf": token.group(1), "next": "/"}
        )

    def csrf(self) -> str:
        page = self.http.get("/")
        m = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert m, page.text[:500]
        return m.group(1)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path_factory.mktemp("dash"), extra_toml=DASHBOARD_TOML)
    add_operators(e, ("olga", "operator"), ("oscar", "operator"), ("sue", "supervisor"))
    e.start()
    yield e
    e.stop()
    log = e.log.read_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def olga(dash: EncProcess) -> Iterator[Operator]:
    o = Operator(dash.url)
    assert o.login("olga").status_code == 303
    yield o
    o.close()


def alert(dash: EncProcess) -> str:
    inc = new_id()
    assert dash.post(make_n1(dash.notifier(), inc)).status_code == 200
    return inc


# -- login, sessions, CSRF ----------------------------------------------------------


def test_pages_need_a_login(dash: EncProcess) -> None:
    c = httpx.Client(base_url=dash.url, timeout=10)
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    assert c.get("/api/alerts").status_code == 401
    assert c.get("/api/alerts").json() == {"error": "log in first"}
    assert c.get("/events").status_code == 401
    inc = alert(dash)
    for path in (f"/alerts/{inc}", f"/alerts/{inc}/photo.jpg", f"/alerts/{inc}/cap.xml", "/audit"):
        assert c.get(path, follow_redirects=False).status_code == 303, path


def test_login_sets_a_strict_session_cookie(dash: EncProcess) -> None:
    o = Operator(dash.url)
    r = o.login("olga")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("cw_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=43200" in cookie
    page = o.http.get("/")
    assert page.status_code == 200 and "olga" in page.text
    assert o.http.get("/api/alerts").status_code == 200


def test_wrong_password_is_refused_without_saying_why(dash: EncProcess) -> None:
    o = Operator(dash.url)
    wrong = o.login("oscar", "not the password")
    unknown = o.login("nobody-here", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    msg = "Wrong name or password, or the account is disabled."
    assert msg in wrong.text and msg in unknown.text
    assert "cw_session" not in o.http.cookies


def test_login_without_its_csrf_token_is_refused(dash: EncProcess) -> None:
    c = httpx.Client(base_url=dash.url, timeout=10)
    r = c.post("/login", data={"username": "olga", "password": PW})
    assert r.status_code == 403 and "cw_session" not in c.cookies
    c.get("/login")  # the cookie alone is not enough either
    r = c.post("/login", data={"username": "olga", "password": PW, "csrf": "guess"})
    assert r.status_code == 403 and "cw_session" not in c.cookies


@pytest.mark.slow  # real argon2id through the CLI: ~0.5 s per hash
def test_repeated_failures_back_off_and_never_lock_out(dash: EncProcess) -> None:
    add_operator(dash, "lena")
    o = Operator(dash.url)
    # An address of its own: the back-off must not slow the other tests' logins.
    o.http = httpx.Client(
        base_url=dash.url,
        follow_redirects=False,
        timeout=15,
        transport=httpx.HTTPTransport(local_address="127.0.4.1"),
    )
    for _ in range(4):  # three free failures; the fourth starts the back-off
        assert o.login("lena", "wrong password").status_code == 401
    r = o.login("lena")
    assert r.status_code == 429  # not checked: wait first, as Retry-After says
    time.sleep(int(r.headers["Retry-After"]))
    assert o.login("lena").status_code == 303
    subprocess.run(
        [
            CITYWATCH,
            "enc",
            "operator",
            "passwd",
            "--config",
            str(dash.config),
            "lena",
            "--password-stdin",
        ],
        input="another password\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert o.login("lena", "another password").status_code == 303
    out = subprocess.run(
        [CITYWATCH, "enc", "operator", "list", "--config", str(dash.config)],
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    assert re.search(r"lena\s+operator\s+active", out)


def test_actions_without_csrf_are_refused(dash: EncProcess, olga: Operator) -> None:
    inc = alert(dash)
    for data in ({}, {"csrf": "forged"}):
        r = olga.http.post(f"/alerts/{inc}/acknowledge", data=data)
        assert r.status_code == 403, data
    r = olga.http.post(f"/api/alerts/{inc}/actions", json={"action": "acknowledge"})
    assert r.status_code == 403
    r = olga.http.post(
        f"/api/alerts/{inc}/actions",
        json={"action": "acknowledge"},
        headers={"X-CSRF-Token": "forged"},
    )
    assert r.status_code == 403
    assert olga.http.get(f"/api/alerts/{inc}").json()["alert"]["status"] == "new"
    # With the token it works.
    r = olga.http.post(f"/alerts/{inc}/acknowledge", data={"csrf": olga.csrf()})
    assert r.status_code == 303
    assert olga.http.get(f"/api/alerts/{inc}").json()["alert"]["taken_by"] == "olga"


def test_expired_session_is_refused(dash: EncProcess) -> None:
    o = Operator(dash.url)
    assert o.login("oscar").status_code == 303
    csrf = o.csrf()
    inc = alert(dash)
    # The session's end is moved into the past in the database, as time would.
    engine = create_engine(f"sqlite:///{dash.workdir / 'data' / 'enc.sqlite3'}")
    with engine.begin() as c:
        c.execute(
            update(SessionRow)
            .where(SessionRow.username == "oscar")
            .values(expires_at=int(time.time() * 1000) - 1)
        )
    engine.dispose()
    assert o.http.get("/").status_code == 303
    assert o.http.get("/api/alerts").status_code == 401
    r = o.http.post(f"/alerts/{inc}/acknowledge", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    check = Operator(dash.url)
    check.login("sue")
    assert check.http.get(f"/api/alerts/{inc}").json()["alert"]["status"] == "new"


def test_logout_ends_the_session(dash: EncProcess) -> None:
    o = Operator(dash.url)
    o.login("olga")
    assert o.http.post("/logout", data={"csrf": "x"}).status_code == 403
    assert o.http.post("/logout", data={"csrf": o.csrf()}).status_code == 303
    assert o.http.get("/api/alerts").status_code == 401


def test_roles(dash: EncProcess, olga: Operator) -> None:
    assert olga.http.get("/audit").status_code == 403
    sue = Operator(dash.url)
    sue.login("sue")
    page = sue.http.get("/audit")
    assert page.status_code == 200 and "login_failed" in page.text
    # An operator cannot reopen a dismissed alert; a supervisor can.
    inc = alert(dash)
    token = {"X-CSRF-Token": olga.csrf()}
    assert (
        olga.http.post(
            f"/api/alerts/{inc}/actions",
            headers=token,
            json={"action": "dismiss", "reason": "a shadow"},
        ).status_code
        == 200
    )
    r = olga.http.post(
        f"/api/alerts/{inc}/actions", headers=token, json={"action": "reopen", "reason": "oops"}
    )
    assert r.status_code == 409 and "supervisor" in r.json()["error"]
    r = sue.http.post(
        f"/api/alerts/{inc}/actions",
        headers={"X-CSRF-Token": sue.csrf()},
        json={"action": "reopen", "reason": "look again"},
    )
    assert r.status_code == 200 and r.json()["status"] == "new"


# -- what operators see -------------------------------------------------------------


def test_live_feed_brings_a_new_alert(dash: EncProcess, olga: Operator) -> None:
    cursor = olga.http.get("/api/alerts").json()["cursor"]
    inc = new_id()
    with olga.http.stream(
        "GET", f"/events?after={cursor}", timeout=httpx.Timeout(15, read=15)
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert dash.post(make_n1(dash.notifier(), inc, device="pole-live")).status_code == 200
        event = None
        for line in stream.iter_lines():
            if line.startswith("data: ") and inc in line:
                event = line
                break
    assert event is not None
    assert '"change":"received"' in event and '"device_uid":"pole-live"' in event


def test_list_is_unhandled_first_then_newest(dash: EncProcess, olga: Operator) -> None:
    ids = []
    for _ in range(3):
        ids.append(alert(dash))
        time.sleep(0.002)  # distinct received times (ms), so that the order is defined
    first, second, third = ids
    token = {"X-CSRF-Token": olga.csrf()}
    olga.http.post(
        f"/api/alerts/{third}/actions",
        headers=token,
        json={"action": "dispatch", "unit": "Ambulance 1"},
    )
    order = [a["incident_id"] for a in olga.http.get("/api/alerts").json()["alerts"]]
    assert order.index(second) < order.index(first) < order.index(third)


def test_photo_views_are_audited(dash: EncProcess, olga: Operator) -> None:
    inc = alert(dash)
    for query in ("", "?full=1"):
        r = olga.http.get(f"/alerts/{inc}/photo.jpg{query}")
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        assert r.headers["cache-control"] == "no-store, private"
    trail = olga.http.get(f"/api/alerts/{inc}").json()["audit"]
    views = [e for e in trail if e["action"] == "photo_viewed"]
    assert [(v["actor"], v["detail"]["full"]) for v in views] == [("olga", False), ("olga", True)]


def test_alert_page_shows_place_device_history_and_trail(dash: EncProcess, olga: Operator) -> None:
    n = dash.notifier()
    earlier = new_id()
    assert dash.post(make_n1(n, earlier, device="pole-hist")).status_code == 200
    inc = new_id()
    assert (
        dash.post(make_n1(n, inc, device="pole-hist", lat=-33.8688, lon=151.2093)).status_code
        == 200
    )
    page = olga.http.get(f"/alerts/{inc}").text
    assert "geo:-33.868800,151.209300;u=4" in page
    assert "-33.868800, 151.209300" in page and "33\u00b052\u2032" in page
    assert f"/alerts/{earlier}" in page  # the earlier alert from the same device
    assert "No map tiles are configured" in page and '<img alt="" src="http' not in page
    assert 'data-action="received"' in page


def test_cap_export_over_http_and_cli(dash: EncProcess, olga: Operator) -> None:
    schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
    inc = alert(dash)
    r = olga.http.get(f"/alerts/{inc}/cap.xml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    schema.validate(r.content)
    assert b"<msgType>Alert</msgType>" in r.content
    olga.http.post(
        f"/api/alerts/{inc}/actions",
        headers={"X-CSRF-Token": olga.csrf()},
        json={"action": "dispatch", "unit": "Fire 2", "comment": "smoke"},
    )
    out = subprocess.run(
        [CITYWATCH, "enc", "cap", "--config", str(dash.config), inc],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    schema.validate(out)
    assert b"<msgType>Update</msgType>" in out and b"<references>enc.test@city.invalid," in out
    r = subprocess.run(
        [CITYWATCH, "enc", "cap", "--config", str(dash.config), "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no alert 'nope'" in r.stderr


def test_pages_fetch_nothing_from_elsewhere(dash: EncProcess, olga: Operator) -> None:
    inc = alert(dash)
    anonymous = httpx.Client(base_url=dash.url, timeout=10)
    for path in ("/", f"/alerts/{inc}", "/login", "/static/dashboard.js", "/static/dashboard.css"):
        r = (anonymous if path == "/login" else olga.http).get(path)
        assert r.status_code == 200, path
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text), path
        assert "@import" not in r.text and "url(http" not in r.text
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert r.headers["x-frame-options"] == "DENY"


# -- hostile requests -----------------------------------------------------------------


def test_malformed_and_oversized_requests_never_break_it(dash: EncProcess, olga: Operator) -> None:
    inc = alert(dash)
    csrf = olga.csrf()
    h = olga.http
    attempts = [
        h.post(f"/alerts/{inc}/dispatch", data={"csrf": csrf, "unit": "x" * 20_000}),
        h.post(
            f"/alerts/{inc}/dispatch",
            content=b"a" * 9000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        h.post(
            f"/alerts/{inc}/dispatch",
            content=iter([b"csrf=" + b"a" * 5000] * 4),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        h.post(
            f"/alerts/{inc}/dispatch",
            content=b"--x\r\nbroken",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ),
        h.post(
            f"/alerts/{inc}/dispatch",
            content=b"\xff\xfe\x00",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        h.post(
            f"/api/alerts/{inc}/actions",
            content=b"{not json",
            headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"},
        ),
        h.post(
            f"/api/alerts/{inc}/actions", json={"action": "explode"}, headers={"X-CSRF-Token": csrf}
        ),
        h.post(f"/api/alerts/{inc}/actions", json=[1, 2], headers={"X-CSRF-Token": csrf}),
        h.post(
            f"/api/alerts/{inc}/actions",
            json={"action": "dispatch", "unit": "u", "extra": 1},
            headers={"X-CSRF-Token": csrf},
        ),
        h.post("/alerts/nope/acknowledge", data={"csrf": csrf}),
        h.post(f"/alerts/{inc}/explode", data={"csrf": csrf}),
        h.get("/alerts/" + "x" * 5000),
        h.get("/api/alerts/" + "%00" * 10),
        h.get("/api/alerts?limit=-1"),
        h.get("/api/alerts?limit=abc"),
        h.get("/events?after=-5"),
        h.get("/events?after=99999999999999999999999"),
        h.get("/static/../enc.sqlite3"),
        h.get("/static/%2e%2e/_config.py"),
        h.get("/login?next=//evil.example/"),
        h.request("PATCH", "/api/alerts"),
        h.request("TRACE", "/"),
        h.post(
            "/login",
            content=b"a" * 100_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        h.get("/", headers={"Cookie": "cw_session=" + "z" * 4000}),
    ]
    for r in attempts:
        assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text)
        assert "Traceback" not in r.text and 'File "' not in r.text
    assert attempts[1].status_code == attempts[2].status_code == 413
    assert attempts[19].status_code == 303 or "evil" not in attempts[19].headers.get("location", "")
    assert h.get(f"/api/alerts/{inc}").json()["alert"]["status"] == "new"


def test_login_redirect_never_leaves_the_site(dash: EncProcess) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"):
        o = Operator(dash.url)
        form = o.http.get("/login", params={"next": target})
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token
        r = o.http.post(
            "/login",
            data={"username": "olga", "password": PW, "csrf": token.group(1), "next": target},
        )
        assert r.status_code == 303 and r.headers["location"] == "/", target


# -- schemathesis against the JSON API -----------------------------------------------


@pytest.fixture(scope="module")
def api_schema(dash: EncProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(dash.url + "/openapi.json")


@pytest.fixture(scope="module")
def sue_headers(dash: EncProcess) -> dict[str, str]:
    sue = Operator(dash.url)
    sue.login("sue")
    alert(dash)  # something to list
    return {"Cookie": f"cw_session={sue.http.cookies['cw_session']}", "X-CSRF-Token": sue.csrf()}


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_json_api_has_no_server_errors(
    api_schema: schemathesis.BaseSchema,
    dash: EncProcess,
    sue_headers: dict[str, str],
    mode: schemathesis.GenerationMode,
) -> None:
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) == 3
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            r = case.call(base_url=dash.url, headers=sue_headers, timeout=15)
            assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text)
            assert "Traceback" not in r.text
            if r.status_code == 200 and case.path == "/api/alerts":
                assert isinstance(r.json()["alerts"], list)

        check()


def test_openapi_lists_only_the_json_api(
    api_schema: schemathesis.BaseSchema, dash: EncProcess
) -> None:
    paths = set(httpx.get(dash.url + "/openapi.json").json()["paths"])
    assert paths == {
        "/api/alerts",
        "/api/alerts/{incident_id}",
        "/api/alerts/{incident_id}/actions",
    }
    assert secrets.compare_digest("ok\n", httpx.get(dash.url + "/healthz").text)


def test_untaken_alert_is_escalated_live(tmp_path: Path) -> None:
    e = EncProcess(tmp_path / "esc", extra_toml="[dashboard]\nescalate_after_seconds = 1\n")
    add_operators(e, ("sue", "supervisor"))
    e.start()
    try:
        sue = Operator(e.url)
        sue.login("sue")
        untaken = alert(e)  # (that a taken alert is not escalated: tests/unit)
        seen: list[str] = []
        with sue.http.stream(
            "GET", "/events?after=0", timeout=httpx.Timeout(15, read=15)
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and '"change":"escalated"' in line:
                    seen.append(line)
                    break
        assert untaken in seen[0] and '"actor":"system"' in seen[0]
        assert sue.http.get(f"/api/alerts/{untaken}").json()["alert"]["escalated_at"]
    finally:
        e.stop()


def test_a_refused_action_is_explained_on_the_next_page(dash: EncProcess, olga: Operator) -> None:
    inc = alert(dash)
    olga.http.post(f"/alerts/{inc}/acknowledge", data={"csrf": olga.csrf()})
    oscar = Operator(dash.url)
    oscar.login("oscar")
    r = oscar.http.post(f"/alerts/{inc}/dispatch", data={"csrf": oscar.csrf(), "unit": "P1"})
    assert r.status_code == 303 and r.headers["location"] == f"/alerts/{inc}"
    page = oscar.http.get(r.headers["location"])
    assert "olga has taken this alert; ask a supervisor" in page.text
    # Said once; and a link cannot put words on the screen.
    assert "ask a supervisor" not in oscar.http.get(f"/alerts/{inc}").text
    assert "pay now" not in oscar.http.get(f"/alerts/{inc}?m=pay+now").text


def test_map_only_from_the_configured_tile_server(tmp_path: Path) -> None:
    e = EncProcess(
        tmp_path / "map",
        extra_toml='[dashboard]\nmap_tile_url = "https://tiles.city.invalid/osm/{z}/{x}/{y}.png"\n',
    )
    add_operators(e, ("olga", "operator"))
    e.start()
    try:
        o = Operator(e.url)
        o.login("olga")
        inc = alert(e)  # 52.2297 N, 21.0122 E: tile x 73186, y 43158 at zoom 17
        r = o.http.get(f"/alerts/{inc}")
        tiles = re.findall(r'src="(https://tiles\.city\.invalid/[^"]+)"', r.text)
        assert len(tiles) == 9
        assert "https://tiles.city.invalid/osm/17/73186/43158.png" in tiles
        assert "https://tiles.city.invalid/osm/17/73185/43157.png" in tiles
        csp = r.headers["content-security-policy"]
        assert "img-src 'self' data: https://tiles.city.invalid;" in csp
        assert "No map tiles are configured" not in r.text
    finally:
        e.stop()


def test_text_from_the_wire_is_escaped(dash: EncProcess, olga: Operator) -> None:
    inc = new_id()
    n1 = make_n1(
        dash.notifier(),
        inc,
        device="<script>alert(1)</script>",
        label="<img src=x onerror=alert(2)>",
    )
    assert dash.post(n1).status_code == 200
    for path in ("/", f"/alerts/{inc}", "/audit"):
        body = olga.http.get(path).text
        assert "<script>alert(1)" not in body and "<img src=x" not in body, path
    # JSON is JSON: the browser never renders it as a page (nosniff), and the script only
    # ever puts it into textContent.
    api = olga.http.get(f"/api/alerts/{inc}")
    assert api.headers["content-type"] == "application/json"
    assert api.headers["x-content-type-options"] == "nosniff"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in olga.http.get(f"/alerts/{inc}").text
