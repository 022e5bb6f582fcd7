"""A shift at the ENC console in a real headless Chromium (Debian's, driven by Playwright)
against ``citywatch enc run`` fed real N1 messages: priorities, escalation of untaken and
of forgotten alerts, new alerts announced on every page, refusals explained, words not
machine names, and the map. Several operators at once, each in a browser context of
their own. Screenshots go to ``artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, login, shot
from tests.integration.test_enc_dashboard import PW, add_operators
from tests.integration.test_enc_endpoint import EncProcess, make_n1, new_id

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

FAST = """
[dashboard]
escalate_after_seconds = 3
escalate_taken_after_seconds = 4
sound_repeat_seconds = 2
time_zone = "Europe/Warsaw"
"""


def _enc(tmp_path_factory: pytest.TempPathFactory, name: str, toml: str) -> Iterator[EncProcess]:
    e = EncProcess(tmp_path_factory.mktemp(name), extra_toml=toml)
    add_operators(
        e, ("olga", "operator"), ("oscar", "operator"), ("sue", "supervisor"), ("sam", "supervisor")
    )
    e.start()
    yield e
    e.stop()
    assert "Traceback" not in e.log.read_text()


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    """An ENC whose escalations take the default minutes (so the order is by priority)."""
    yield from _enc(tmp_path_factory, "calm", "")


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncProcess]:
    """An ENC that escalates within seconds and repeats its cue every 2 s."""
    yield from _enc(tmp_path_factory, "fast", FAST)


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (scripts/setup.sh installs Debian's chromium)")
    with playwright_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: object) -> Iterator[object]:
    b = playwright.chromium.launch(  # type: ignore[attr-defined]
        executable_path=CHROMIUM, args=CHROMIUM_ARGS
    )
    yield b
    b.close()


# Headless Chromium lets any page play sound; a browser at a desk does not before a click
# in the page. This makes the page's AudioContext behave like the desk browser's: it says
# "suspended" from the start until its own resume() runs inside the real user activation
# that a trusted click gives. The state is the wrapper's own, not the real context's: the
# real one is suspended too (no sound), but headless Chromium may start it running after
# the constructor's suspend(), and the page must not see that race.
DESK_AUDIO_POLICY = """(() => {
  // A trusted pointer or key event in this page itself: navigator.userActivation was
  // seen active in a fresh tab nobody had clicked in (headless Chromium, loaded machine).
  let clicked = false;
  const mark = (e) => { if (e.isTrusted) clicked = true; };
  window.addEventListener("pointerdown", mark, true);
  window.addEventListener("keydown", mark, true);
  const Real = window.AudioContext;
  window.AudioContext = class extends Real {
    #allowed = false;
    constructor(...a) { super(...a); super.suspend(); }
    get state() {
      const real = super.state;
      return this.#allowed || real === "closed" ? real : "suspended";
    }
    resume() {
      if (!clicked || !navigator.userActivation.isActive) {
        return Promise.reject(new DOMException("needs a click", "NotAllowedError"));
      }
      this.#allowed = true;
      return super.resume();
    }
  };
})();"""


class Desk:
    """One operator's browser: a context of its own, errors and outside requests kept."""

    def __init__(
        self, browser: object, enc: EncProcess, name: str, size: tuple[int, int] = (1366, 768)
    ) -> None:
        self.ctx = browser.new_context(  # type: ignore[attr-defined]
            viewport={"width": size[0], "height": size[1]}
        )
        self.errors: list[str] = []
        self.external: list[str] = []
        self.page = self._new_page()
        self.enc = enc
        login(self.page, enc.url, name)
        self.page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)

    def _new_page(self) -> object:
        page = self.ctx.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "request",
            lambda r: (
                self.external.append(r.url)
                if not r.url.startswith(("http://127.0.0.1", "data:"))
                else None
            ),
        )
        return page

    def fresh_tab(self, path: str) -> object:
        """The page in a new tab of the same login: nobody has clicked in it yet."""
        old = self.page
        self.page = self._new_page()
        old.close()
        return self.open(path)

    def open(self, path: str) -> object:
        self.page.goto(self.enc.url + path)
        self.page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        return self.page

    def close(self) -> None:
        self.ctx.close()
        assert self.errors == [], self.errors
        assert self.external == [], self.external


@pytest.fixture
def desks(browser: object) -> Iterator[list[Desk]]:
    opened: list[Desk] = []
    yield opened
    for d in opened:
        d.close()


def post(enc: EncProcess, **kw: object) -> str:
    inc = new_id()
    r = enc.post(make_n1(enc.notifier(), inc, **kw))  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return inc


def api(enc: EncProcess, name: str) -> httpx.Client:
    """An operator over plain HTTP (for a colleague's clicks in the background)."""
    c = httpx.Client(base_url=enc.url, timeout=10)
    form = c.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    c.post("/login", data={"username": name, "password": PW, "csrf": token, "next": "/"})
    page = c.get("/").text
    c.headers["X-CSRF-Token"] = re.search(  # type: ignore[union-attr]
        r'name="csrf-token" content="([^"]+)"', page
    ).group(1)
    return c


def rows(page: object) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#alerts tbody tr", "rs => rs.map(r => r.dataset.incident)"
    )


# -- 1. priorities and escalation ---------------------------------------------------


def test_list_is_sorted_by_priority_then_age_live(
    calm: EncProcess, browser: object, desks: list[Desk]
) -> None:
    olga = Desk(browser, calm, "olga")
    desks.append(olga)
    p = olga.page
    unsure = post(calm, label="person_down", score=0.62, device="pole-p1")
    down = post(calm, label="person_down", score=0.9, device="pole-p2")
    fight = post(calm, label="fight", score=0.8, device="pole-p3")
    down2 = post(calm, label="fall", score=0.95, device="pole-p4")
    p.wait_for_selector(f"tr[data-incident='{down2}']", timeout=WAIT_MS)
    # Live, without a reload: the fight on top though it came before the last fall.
    assert rows(p)[:4] == [fight, down2, down, unsure]
    assert p.text_content(f"tr[data-incident='{fight}'] td.priority") == "P1 Fight"
    assert p.text_content(f"tr[data-incident='{down}'] td.what") == "Person down"
    assert p.text_content(f"tr[data-incident='{down2}'] td.what") == "Fall"
    assert p.text_content(f"tr[data-incident='{unsure}'] td.priority") == "P3 Uncertain"
    shot(p, "shift-list-priorities.png")
    # The same order after a reload (rendered by the server) and from the API.
    olga.open("/")
    assert rows(p)[:4] == [fight, down2, down, unsure]
    c = api(calm, "olga")
    listed = [a["incident_id"] for a in c.get("/api/alerts").json()["alerts"]]
    assert listed[:4] == [fight, down2, down, unsure]
    # A dispatched fight goes below every unhandled alert.
    c.post(f"/api/alerts/{fight}/actions", json={"action": "dispatch", "unit": "Police 3"})
    p.wait_for_function(
        f"() => document.querySelector(\"tr[data-incident='{fight}']\")"
        ".dataset.status === 'dispatched'",
        timeout=WAIT_MS,
    )
    order = rows(p)
    assert order.index(unsure) < order.index(fight)


def test_untaken_and_forgotten_alerts_escalate_to_the_supervisor(
    fast: EncProcess, browser: object, desks: list[Desk]
) -> None:
    sue = Desk(browser, fast, "sue")
    olga = Desk(browser, fast, "olga")
    desks += [sue, olga]
    taken = post(fast, label="person_down", score=0.9, device="pole-e1")
    olga.open(f"/alerts/{taken}")
    olga.page.click("#btn-acknowledge")
    olga.page.wait_for_selector("#status:text('acknowledged')", timeout=WAIT_MS)
    loaded_at = olga.page.evaluate("window.cw.loadedAt")
    untaken = post(fast, label="person_down", score=0.9, device="pole-e2")

    # The supervisor is told on the page, whatever page: both, with what is wrong.
    box = "#escalations li[data-incident='{}']"
    sue.page.wait_for_selector(box.format(untaken), timeout=WAIT_MS)
    assert "nobody has taken it" in sue.page.text_content(box.format(untaken))
    sue.page.wait_for_selector(box.format(taken), timeout=WAIT_MS)
    assert "taken by olga, not finished" in sue.page.text_content(box.format(taken))
    assert "escalated" in sue.page.evaluate("window.cw.cues")
    shot(sue.page, "shift-escalated-supervisor.png")
    # The operator who took it and forgot it is told in place (no reload under them).
    olga.page.wait_for_selector("#escalation", timeout=WAIT_MS)
    assert "taken by olga and not finished" in olga.page.text_content("#escalation")
    assert olga.page.evaluate("window.cw.loadedAt") == loaded_at
    # An operator's list shows them too (first, pulsing), without the supervisors' banner.
    olga.open("/")
    assert olga.page.is_hidden("#escalations")
    assert set(rows(olga.page)[:2]) == {taken, untaken}
    # An escalated person down sits above a newer fight that is not (yet) escalated.
    fight = post(fast, label="fight", score=0.9, device="pole-e3")
    olga.page.wait_for_selector(f"tr[data-incident='{fight}']", timeout=WAIT_MS)
    order = rows(olga.page)
    assert order.index(untaken) < order.index(fight)

    # The trail says it in words.
    olga.open(f"/alerts/{taken}")
    trail = olga.page.text_content("#trail")
    assert re.search(r"Escalated\s*taken by olga and not finished for \d+ s", trail), trail
    olga.open(f"/alerts/{untaken}")
    assert "nobody took it for 3 s" in olga.page.text_content("#trail")
    # Finishing it ends the escalation on the supervisor's screen.
    c = api(fast, "olga")
    assert (
        c.post(
            f"/api/alerts/{taken}/actions", json={"action": "dispatch", "unit": "Ambulance 4"}
        ).status_code
        == 200
    )
    sue.page.wait_for_selector(box.format(taken), state="detached", timeout=WAIT_MS)


# -- 2. attention on every page -------------------------------------------------------


def _take_all_new(enc: EncProcess) -> None:
    c = api(enc, "sam")
    for a in c.get("/api/alerts").json()["alerts"]:
        if a["status"] == "new":
            c.post(f"/api/alerts/{a['incident_id']}/actions", json={"action": "acknowledge"})


def _cues(page: object, prefix: str = "") -> int:
    return int(
        page.evaluate(  # type: ignore[attr-defined]
            "(p) => window.cw.cues.filter(c => c.startsWith(p)).length", prefix
        )
    )


def test_a_new_alert_is_announced_on_every_page_until_someone_takes_it(
    fast: EncProcess, browser: object, desks: list[Desk]
) -> None:
    _take_all_new(fast)
    viewing = post(fast, label="person_down", score=0.9, device="pole-a1")
    sam = api(fast, "sam")
    sam.post(f"/api/alerts/{viewing}/actions", json={"action": "acknowledge"})
    olga = Desk(browser, fast, "olga")  # inside another alert's page
    sue = Desk(browser, fast, "sue")  # on the audit trail
    oscar = Desk(browser, fast, "oscar")  # on the list
    desks += [olga, sue, oscar]
    for d in (olga, sue, oscar):
        d.ctx.add_init_script(DESK_AUDIO_POLICY)
    olga.fresh_tab(f"/alerts/{viewing}")
    sue.fresh_tab("/audit")
    oscar.fresh_tab("/")
    # Browsers keep sound off until a click in the page: the control to enable it is in
    # sight (a login click in the same tab would have let it play already).
    for d in (olga, sue, oscar):
        d.page.wait_for_selector("#sound-enable", state="visible", timeout=WAIT_MS)
        assert d.page.evaluate("window.cw.audioState") != "running"
    olga.page.click("#sound-enable")
    olga.page.wait_for_function("() => window.cw.audioState === 'running'", timeout=WAIT_MS)
    assert olga.page.is_hidden("#sound-enable")

    fight = post(fast, label="fight", score=0.88, device="pole-a2")
    for d in (olga, sue, oscar):
        t = d.page.wait_for_selector(f".toast[data-incident='{fight}']", timeout=WAIT_MS)
        assert "New alert: Fight (P1) at pole-a2, 88%" in t.text_content()
        assert (
            t.get_attribute("href") is None
            and t.query_selector("a").get_attribute("href") == f"/alerts/{fight}"
        )
        d.page.wait_for_function("() => document.title.startsWith('(1 new')", timeout=WAIT_MS)
        assert "new" in d.page.evaluate("window.cw.cues")
    shot(olga.page, "shift-new-alert-on-alert-page.png")
    shot(sue.page, "shift-new-alert-on-audit.png")
    # The cue repeats while nobody has taken it ...
    n = _cues(olga.page, "repeat")
    olga.page.wait_for_function(
        f"() => window.cw.cues.filter(c => c.startsWith('repeat')).length >= {n + 2}",
        timeout=WAIT_MS,
    )
    # ... and stops, with the toast and the title's count, once a colleague takes it.
    assert (
        sam.post(f"/api/alerts/{fight}/actions", json={"action": "acknowledge"}).status_code == 200
    )
    for d in (olga, sue, oscar):
        d.page.wait_for_selector(
            f".toast[data-incident='{fight}']", state="detached", timeout=WAIT_MS
        )
        d.page.wait_for_function("() => !document.title.startsWith('(')", timeout=WAIT_MS)
    after = [_cues(d.page, "repeat") for d in (olga, sue, oscar)]
    olga.page.wait_for_timeout(2 * 2000 + 500)  # two repeat periods
    assert [_cues(d.page, "repeat") for d in (olga, sue, oscar)] == after


# -- 3. refusals explained, forms that would be refused not shown, takeover confirmed --


def test_refusals_are_explained_and_a_takeover_is_confirmed(
    calm: EncProcess, browser: object, desks: list[Desk]
) -> None:
    olga_http = api(calm, "olga")
    taken = post(calm, label="person_down", score=0.9, device="pole-r1")
    olga_http.post(f"/api/alerts/{taken}/actions", json={"action": "acknowledge"})
    oscar = Desk(browser, calm, "oscar")
    desks.append(oscar)
    # An operator sees why they cannot act, and no form that would be refused.
    p = oscar.open(f"/alerts/{taken}")
    assert "olga has taken this alert" in p.text_content("#taken-notice")
    for form in ("#form-acknowledge", "#form-dispatch", "#form-dismiss", "#form-reopen"):
        assert p.query_selector(form) is None, form
    p.keyboard.press("d")  # the shortcut says why instead of doing nothing
    t = p.wait_for_selector(".toast.refused", timeout=WAIT_MS)
    assert "Not possible: olga has taken this alert" in t.text_content()

    # A form that became stale while open: refused, and said on the page.
    later = post(calm, label="fight", score=0.9, device="pole-r2")
    p = oscar.open(f"/alerts/{later}")
    p.fill("#unit", "Police 7")  # typing: the page does not reload under the operator
    olga_http.post(f"/api/alerts/{later}/actions", json={"action": "acknowledge"})
    p.wait_for_selector("#changed:not([hidden])", timeout=WAIT_MS)
    p.click("#btn-dispatch")
    p.wait_for_selector("#message", timeout=WAIT_MS)
    assert "changed while you looked at it: it is now taken by olga" in p.text_content("#message")
    assert p.text_content("#message").startswith("Not done:")
    assert olga_http.get(f"/api/alerts/{later}").json()["alert"]["taken_by"] == "olga"
    shot(p, "shift-refused.png")

    # A refused keyboard action on the list is said in a toast.
    p = oscar.open("/")
    for _ in range(rows(p).index(taken) + 1):
        p.keyboard.press("j")
    assert p.eval_on_selector("tr.selected", "r => r.dataset.incident") == taken
    p.keyboard.press("a")
    t = p.wait_for_selector(".toast.refused", timeout=WAIT_MS)
    assert "Not done: cannot acknowledge (take) an alert that is taken" in t.text_content()

    # A supervisor is warned before taking over a colleague's alert, and must confirm.
    sue = Desk(browser, calm, "sue")
    desks.append(sue)
    p = sue.open(f"/alerts/{taken}")
    assert "olga is working on this alert" in p.text_content("#takeover-warning")
    p.fill("#unit", "Ambulance 9")
    p.click("#btn-dispatch")  # not confirmed: the browser does not send it
    assert p.evaluate(
        "document.querySelector('#form-dispatch input.takeover').validity.valueMissing"
    )
    assert olga_http.get(f"/api/alerts/{taken}").json()["alert"]["status"] == "acknowledged"
    shot(p, "shift-takeover-warning.png")
    p.check("#form-dispatch input.takeover")
    p.click("#btn-dispatch")
    p.wait_for_selector("#status:text('dispatched')", timeout=WAIT_MS)
    assert "Taken over from olga" in p.text_content("#trail")
    # Forged past the browser (no confirmation): refused by the ENC itself.
    other = post(calm, label="fight", score=0.9, device="pole-r3")
    olga_http.post(f"/api/alerts/{other}/actions", json={"action": "acknowledge"})
    p = sue.open(f"/alerts/{other}")
    p.evaluate("document.querySelectorAll('input.takeover').forEach(i => i.remove())")
    p.fill("#unit", "Police 1")
    p.click("#btn-dispatch")
    p.wait_for_selector("#message", timeout=WAIT_MS)
    assert 'tick "Take over from olga"' in p.text_content("#message")
    assert olga_http.get(f"/api/alerts/{other}").json()["alert"]["taken_by"] == "olga"


# -- 4. words, zones, the fold, photo views ----------------------------------------------


def test_words_zones_fold_and_photo_views(
    fast: EncProcess, browser: object, desks: list[Desk]
) -> None:
    inc = post(fast, label="person_down", score=0.91, device="pole-w1")
    olga = Desk(browser, fast, "olga", size=(1024, 768))
    desks.append(olga)
    p = olga.open(f"/alerts/{inc}")
    text = p.inner_text("body")
    assert "Person down" in p.text_content("#label-words")
    assert "person_down" not in text
    # Times in the ENC's zone (Europe/Warsaw: CET in winter, CEST in summer), with it.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T", p.text_content("#received"))
    # The dispatch form is in sight at 1024x768, without scrolling.
    for sel in ("#unit", "#btn-dispatch", "#btn-dismiss"):
        box = p.query_selector(sel).bounding_box()
        assert box["y"] + box["height"] <= 768, (sel, box)
    shot(p, "shift-alert-1024x768.png")
    # Loading the page (with its blurred preview) is no view; opening the photo is.
    assert p.evaluate("document.getElementById('photo').naturalWidth") == 160
    p.reload()
    p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    c = api(fast, "olga")

    def views() -> list[dict[str, Any]]:
        audit = c.get(f"/api/alerts/{inc}").json()["audit"]
        return [e for e in audit if e["action"] == "photo_viewed"]

    assert views() == []
    p.click("#photo-open")
    p.wait_for_function(
        "() => document.getElementById('photo-full-img').naturalWidth > 0", timeout=WAIT_MS
    )
    assert [(v["actor"], v["detail"]["view"]) for v in views()] == [("olga", "full")]
    p.keyboard.press("Escape")
    p.reload()
    p.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
    assert re.search(r"Photo viewed\s*full size", p.text_content("#trail"))
    # The supervisors' audit page in words too.
    sue = Desk(browser, fast, "sue")
    desks.append(sue)
    p = sue.open("/audit")
    audit = p.inner_text("#audit")
    for raw in ("untaken_for_s", "full False", "person_down", "photo_viewed", "took_over_from"):
        assert raw not in audit, raw
    assert "Photo viewed" in audit and "Escalated" in audit and "Logged in" in audit
    shot(p, "shift-audit.png")


# -- 5. where: Leaflet, served by the ENC, on a plain background or the city's tiles -----


def _need_leaflet() -> None:
    from enc._web import LEAFLET, STATIC

    if not (STATIC / LEAFLET / "leaflet.js").is_file():
        pytest.skip("Leaflet is not installed (scripts/setup.sh installs it with npm)")


def test_map_on_a_plain_background_with_the_other_alerts(
    calm: EncProcess, browser: object, desks: list[Desk]
) -> None:
    _need_leaflet()
    here = post(calm, label="person_down", score=0.9, device="pole-m1", lat=52.2297, lon=21.0122)
    post(calm, label="fight", score=0.9, device="pole-m2", lat=52.2310, lon=21.0140)
    olga = Desk(browser, calm, "olga")
    desks.append(olga)
    p = olga.open(f"/alerts/{here}")
    focus = p.wait_for_selector("#map path.focus", timeout=WAIT_MS)
    assert p.is_visible("#map path.accuracy")
    centre = p.evaluate(
        "(() => { const c = window.cw.maps.alert.m.getCenter(); return [c.lat, c.lng]; })()"
    )
    assert centre == pytest.approx([52.2297, 21.0122], abs=1e-6)
    # The alert sits in the middle of the map; the nearby fight is drawn too.
    box, frame = focus.bounding_box(), p.query_selector("#map").bounding_box()
    assert abs(box["x"] + box["width"] / 2 - (frame["x"] + frame["width"] / 2)) < 3
    assert abs(box["y"] + box["height"] / 2 - (frame["y"] + frame["height"] / 2)) < 3
    others = [o.bounding_box() for o in p.query_selector_all("#map path.other")]
    assert others and all(
        frame["x"] <= o["x"] <= frame["x"] + frame["width"]
        and frame["y"] <= o["y"] <= frame["y"] + frame["height"]
        for o in others
    )  # the fight 190 m away is in the frame
    assert "Person down at pole-m1" in p.text_content("#map .leaflet-tooltip")
    assert p.query_selector_all("#map img") == []  # no tiles: nothing to fetch
    assert p.is_visible("#map .leaflet-control-scale")
    p.query_selector("#map").scroll_into_view_if_needed()
    shot(p, "shift-map-plain.png")


class TileServer:
    """A tile server on loopback (the city's own, say): any tile is a small PNG."""

    def __init__(self) -> None:
        import http.server
        import io
        import threading

        from PIL import Image

        from tests.support.services import free_port

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (60, 90, 70)).save(buf, "PNG")
        png = buf.getvalue()
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tiles_by_url_and_the_wall_display_with_photo_and_map(
    tmp_path_factory: pytest.TempPathFactory, browser: object, desks: list[Desk]
) -> None:
    _need_leaflet()
    tiles = TileServer()
    try:
        gen = _enc(
            tmp_path_factory,
            "tiles",
            "[dashboard]\nmap_tile_url = "
            f'"http://127.0.0.1:{tiles.port}/osm/{{z}}/{{x}}/{{y}}.png"\n',
        )
        enc = next(gen)
        inc = post(enc, label="fight", score=0.9, device="pole-t1", lat=52.2297, lon=21.0122)
        olga = Desk(browser, enc, "olga")
        desks.append(olga)
        p = olga.open(f"/alerts/{inc}")
        p.wait_for_selector("#map img.leaflet-tile-loaded", timeout=WAIT_MS)
        assert "/osm/17/73186/43158.png" in tiles.paths  # the tile the place is in
        p.query_selector("#map").scroll_into_view_if_needed()
        shot(p, "shift-map-tiles.png")

        wall = Desk(browser, enc, "oscar", size=(1920, 1080))
        desks.append(wall)
        p = wall.open("/?wall=1")
        p.wait_for_function(
            "() => document.getElementById('wall-photo').naturalWidth === 160", timeout=WAIT_MS
        )
        p.wait_for_selector("#wall-map path.focus", timeout=WAIT_MS)
        assert "P1 Fight at pole-t1" in p.text_content("#wall-title")
        views = [
            e
            for e in api(enc, "oscar").get(f"/api/alerts/{inc}").json()["audit"]
            if e["action"] == "photo_viewed"
        ]
        assert [(v["actor"], v["detail"]["view"]) for v in views] == [("oscar", "wall")]
        # A more urgent alert takes the wall.
        other = post(enc, label="fight", score=0.95, device="pole-t2", lat=52.2301, lon=21.0130)
        p.wait_for_function(
            f"() => document.getElementById('wall-photo').src.includes('{other}')", timeout=WAIT_MS
        )
        shot(p, "shift-wall-1920x1080.png")
        for d in (olga, wall):  # their event streams end before the ENC stops
            d.close()
            desks.remove(d)
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        tiles.close()


# -- 6. CAP 1.2: the photo carried, every earlier update cited ---------------------------


def test_cap_export_cites_every_earlier_update_and_carries_the_photo(
    calm: EncProcess, browser: object, desks: list[Desk]
) -> None:
    import base64
    import hashlib
    import xml.etree.ElementTree as ET

    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed")
    from tests.integration.test_enc_dashboard import SCHEMA_FILE

    schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
    ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
    inc = post(calm, label="fight", score=0.9, device="pole-c1")
    olga, sue = Desk(browser, calm, "olga"), Desk(browser, calm, "sue")
    desks += [olga, sue]

    def export(d: Desk) -> ET.Element:
        r = d.page.request.get(f"{calm.url}/alerts/{inc}/cap.xml")
        assert r.ok
        schema.validate(r.body())
        return ET.fromstring(r.body())

    def own(x: ET.Element) -> str:
        return ",".join(
            x.findtext(f"cap:{k}", namespaces=ns) or "" for k in ("sender", "identifier", "sent")
        )

    original = own(export(olga))
    p = olga.open(f"/alerts/{inc}")
    p.fill("#dismiss-reason", "two friends play-fighting")
    p.click("#btn-dismiss")
    p.wait_for_selector("#status:text('dismissed')", timeout=WAIT_MS)
    cancel = export(olga)
    assert cancel.findtext("cap:msgType", namespaces=ns) == "Cancel"
    assert cancel.findtext("cap:references", namespaces=ns) == original
    olga.open("/")  # (an open alert page reloads when a colleague changes it)
    p = sue.open(f"/alerts/{inc}")
    p.fill("#reopen-reason", "one of them is on the ground now")
    p.click("#btn-reopen")
    p.wait_for_selector("#status:text('new')", timeout=WAIT_MS)
    reopened = export(sue)
    sue.open("/")
    p = olga.open(f"/alerts/{inc}")
    p.fill("#unit", "Police 2")
    p.click("#btn-dispatch")
    p.wait_for_selector("#status:text('dispatched')", timeout=WAIT_MS)
    update = export(olga)
    assert update.findtext("cap:msgType", namespaces=ns) == "Update"
    # The original, the cancel and the reopening, oldest first, as each was exported.
    assert update.findtext("cap:references", namespaces=ns).split() == [
        original,
        own(cancel),
        own(reopened),
    ]
    # The photo: the one the ENC holds, carried whole, with its digest and size.
    res = update.find("cap:info/cap:resource", ns)
    photo = sue.page.request.get(f"{calm.url}/alerts/{inc}/photo.jpg").body()
    assert base64.b64decode(res.findtext("cap:derefUri", namespaces=ns)) == photo
    assert res.findtext("cap:digest", namespaces=ns) == hashlib.sha1(photo).hexdigest()
    assert res.findtext("cap:size", namespaces=ns) == str(len(photo))
