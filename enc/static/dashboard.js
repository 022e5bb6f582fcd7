/* CityWatch ENC dashboard: live list (server-sent events), ages that tick, sound cues
   made with WebAudio, keyboard shortcuts. No libraries, nothing fetched from elsewhere.
   Untrusted text (labels, device names) only ever goes into textContent. */
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content;
  const csrf = meta("csrf-token");
  const escalateAfter = Number(meta("escalate-after-ms") || 120000);
  // Test and diagnostics hooks: what the page has done so far.
  const cw = (window.cw = { cues: [], loadedAt: Date.now(), events: 0, clockOffset: 0 });

  // -- time ----------------------------------------------------------------------------
  const serverNow = () => Date.now() + cw.clockOffset;
  function age(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
    return `${Math.floor(h / 24)} d`;
  }
  function tickAges() {
    const now = serverNow();
    for (const el of document.querySelectorAll("[data-age-from]")) {
      el.textContent = age(now - Number(el.dataset.ageFrom));
    }
    for (const tr of document.querySelectorAll("tr.alert[data-status='new']")) {
      if (now - Number(tr.dataset.statusAt) >= escalateAfter) tr.classList.add("escalated");
    }
    updateCounters();
  }
  function localTimes(root) {
    for (const t of (root || document).querySelectorAll("time[datetime]")) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.title = t.getAttribute("datetime") + " UTC"; t.textContent = d.toLocaleString(); }
    }
  }

  // -- sound -----------------------------------------------------------------------------
  let audio = null;
  let soundOn = localStorage.getItem("cw-sound") !== "off";
  function audioContext() {
    if (!audio) {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      audio = new AC();
    }
    return audio;
  }
  function tone(ctx, freq, start, dur, type) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = type;
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.35, start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + dur);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + dur + 0.05);
  }
  function cue(kind) {
    cw.cues.push(kind);
    body.dataset.cues = String(cw.cues.length);
    flashTitle();
    if (!soundOn) return;
    const ctx = audioContext();
    if (!ctx) return;
    if (ctx.state === "suspended") {
      ctx.resume().catch(() => {});
      const banner = document.getElementById("sound-blocked");
      if (banner && ctx.state === "suspended") banner.hidden = false;
    }
    const t = ctx.currentTime + 0.05;
    if (kind === "escalated") {
      for (let i = 0; i < 4; i++) tone(ctx, i % 2 ? 440 : 330, t + i * 0.25, 0.22, "square");
    } else {
      for (let i = 0; i < 3; i++) tone(ctx, i % 2 ? 660 : 880, t + i * 0.18, 0.15, "triangle");
    }
  }
  function unlockAudio() {
    const banner = document.getElementById("sound-blocked");
    if (banner) banner.hidden = true;
    if (soundOn && audioContext() && audio.state === "suspended") audio.resume().catch(() => {});
  }
  document.addEventListener("pointerdown", unlockAudio);
  document.addEventListener("keydown", unlockAudio);
  function showSound() {
    const b = document.querySelector("#sound-toggle span");
    if (b) b.textContent = soundOn ? "on" : "off";
  }
  function toggleSound() {
    soundOn = !soundOn;
    localStorage.setItem("cw-sound", soundOn ? "on" : "off");
    showSound();
    if (soundOn) unlockAudio();
  }
  const soundButton = document.getElementById("sound-toggle");
  if (soundButton) soundButton.addEventListener("click", toggleSound);
  showSound();

  const baseTitle = document.title;
  let unseen = 0;
  function flashTitle() {
    if (document.hidden) { unseen += 1; document.title = `(${unseen}) ${baseTitle}`; }
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) { unseen = 0; document.title = baseTitle; }
  });

  // -- keyboard ----------------------------------------------------------------------------
  const help = document.getElementById("help");
  function typing(e) {
    const t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable);
  }
  const keys = {};
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (document.querySelector("dialog[open]")) return; // Esc closes dialogs natively
    const f = keys[e.key];
    if (f) { e.preventDefault(); f(e); }
  });
  keys["?"] = () => help && help.showModal();
  keys.m = toggleSound;

  // -- live feed ---------------------------------------------------------------------------
  function liveState(on) {
    const el = document.getElementById("live-state");
    if (el) { el.textContent = on ? "live" : "reconnecting"; el.className = "live " + (on ? "on" : "off"); }
  }
  function openFeed(cursor, onAlert) {
    const es = new EventSource(`/events?after=${cursor}`);
    es.addEventListener("open", () => liveState(true));
    es.addEventListener("alert", (ev) => { cw.events += 1; onAlert(JSON.parse(ev.data)); });
    es.addEventListener("logout", () => { es.close(); location.assign("/login?next=" + encodeURIComponent(location.pathname)); });
    es.addEventListener("error", () => {
      liveState(false);
      if (es.readyState === EventSource.CLOSED) {
        // Refused (the session ended?): ask once, then go to the login page or retry.
        fetch("/api/alerts?limit=1", { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) location.assign("/login?next=" + encodeURIComponent(location.pathname));
          else setTimeout(() => openFeed(cursor, onAlert), 3000);
        }, () => setTimeout(() => openFeed(cursor, onAlert), 3000));
      }
    });
    return es;
  }

  // -- the list ----------------------------------------------------------------------------
  const table = document.getElementById("alerts");
  const tbody = table && table.tBodies[0];
  function updateCounters() {
    if (!tbody) return;
    const rows = [...tbody.rows];
    const un = rows.filter((r) => r.dataset.status === "new" || r.dataset.status === "acknowledged").length;
    const esc = rows.filter((r) => r.dataset.status === "new" && r.classList.contains("escalated")).length;
    const u = document.getElementById("count-unhandled");
    const x = document.getElementById("count-escalated");
    if (u) u.textContent = String(un);
    if (x) x.textContent = String(esc);
    const empty = document.getElementById("empty");
    if (empty) empty.hidden = rows.length > 0;
  }
  function cell(tr, cls, text) {
    const td = document.createElement("td");
    td.className = cls;
    if (text !== undefined) td.textContent = text;
    tr.appendChild(td);
    return td;
  }
  function renderRow(a) {
    const tr = document.createElement("tr");
    tr.className = `alert status-${a.status}`;
    if (a.escalated_at && a.status === "new") tr.classList.add("escalated");
    tr.dataset.incident = a.incident_id;
    tr.dataset.receivedAt = a.received_at;
    tr.dataset.statusAt = a.status_at;
    tr.dataset.status = a.status;
    tr.tabIndex = -1;
    cell(tr, "age").dataset.ageFrom = a.received_at;
    const st = cell(tr, "status");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = a.status;
    st.appendChild(badge);
    if (a.taken_by) { const s = document.createElement("small"); s.textContent = " " + a.taken_by; st.appendChild(s); }
    const what = cell(tr, "what");
    const link = document.createElement("a");
    link.href = a.url;
    link.textContent = a.label;
    what.appendChild(link);
    cell(tr, "num", `${Math.round(a.score * 100)}%`);
    cell(tr, "device", a.device_uid);
    cell(tr, "place", `${a.lat.toFixed(5)}, ${a.lon.toFixed(5)}`);
    const time = document.createElement("time");
    time.setAttribute("datetime", new Date(a.received_at).toISOString().replace(".000Z", "+00:00"));
    cell(tr, "time").appendChild(time);
    localTimes(tr);
    return tr;
  }
  function sortRows() {
    const handled = (r) => (r.dataset.status === "dispatched" || r.dataset.status === "dismissed" ? 1 : 0);
    const rows = [...tbody.rows].sort((x, y) =>
      handled(x) - handled(y) || Number(y.dataset.receivedAt) - Number(x.dataset.receivedAt));
    for (const r of rows) tbody.appendChild(r);
  }
  function upsert(a, fresh) {
    const old = [...tbody.rows].find((r) => r.dataset.incident === a.incident_id);
    const tr = renderRow(a);
    if (old && old.classList.contains("selected")) tr.classList.add("selected");
    if (old) old.replaceWith(tr); else tbody.appendChild(tr);
    if (fresh) tr.classList.add("arrived");
    sortRows();
    tickAges();
  }
  function selected() { return tbody && tbody.querySelector("tr.selected"); }
  function select(tr) {
    const cur = selected();
    if (cur) cur.classList.remove("selected");
    if (tr) { tr.classList.add("selected"); tr.scrollIntoView({ block: "nearest" }); }
  }
  function move(step) {
    const rows = [...tbody.rows];
    const i = rows.indexOf(selected());
    select(rows[Math.min(rows.length - 1, Math.max(0, i + step))]);
  }

  if (page === "list" && tbody) {
    cw.clockOffset = Number(table.dataset.now) - Date.now();
    for (const tr of tbody.rows) tr.tabIndex = -1;
    tbody.addEventListener("click", (e) => {
      const tr = e.target.closest("tr.alert");
      if (tr && !e.target.closest("a")) location.assign(tr.querySelector("a").href);
    });
    fetch("/api/alerts?limit=200", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((data) => {
        cw.clockOffset = data.now - Date.now();
        const sel = selected() && selected().dataset.incident;
        tbody.replaceChildren(...data.alerts.map((a) => renderRow(a)));
        if (sel) select([...tbody.rows].find((r) => r.dataset.incident === sel));
        tickAges();
        openFeed(Math.min(data.cursor, Number(table.dataset.cursor)), (a) => {
          upsert(a, a.change === "received");
          if (a.change === "received") cue("new");
          else if (a.change === "escalated") cue("escalated");
        });
        body.dataset.ready = "1";
      })
      .catch((status) => { if (status === 401) location.assign("/login"); });
    keys.j = keys.ArrowDown = () => move(1);
    keys.k = keys.ArrowUp = () => move(-1);
    keys.Enter = keys.o = () => { const tr = selected(); if (tr) location.assign(tr.querySelector("a").href); };
    keys.a = () => {
      const tr = selected();
      if (!tr) return;
      fetch(`/api/alerts/${encodeURIComponent(tr.dataset.incident)}/actions`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ action: "acknowledge" }),
      }).then((r) => r.json()).then((a) => { if (a.incident_id) upsert(a, false); });
    };
    localTimes();
    tickAges();
    setInterval(tickAges, 1000);
  }

  // -- an alert --------------------------------------------------------------------------
  const article = document.getElementById("alert");
  if (page === "alert" && article) {
    const incident = article.dataset.incident;
    const full = document.getElementById("photo-full");
    const fullImg = document.getElementById("photo-full-img");
    function openPhoto() {
      if (!fullImg.getAttribute("src")) fullImg.src = fullImg.dataset.src;
      full.showModal();
    }
    document.getElementById("photo-open").addEventListener("click", openPhoto);
    full.addEventListener("click", (e) => { if (e.target === full || e.target === fullImg) full.close(); });
    const copied = document.getElementById("copied");
    function copy(text) {
      const done = () => { copied.hidden = false; setTimeout(() => (copied.hidden = true), 1500); };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, () => {});
      else {
        const ta = document.createElement("textarea");
        ta.value = text;
        document.body.appendChild(ta);
        ta.select();
        try { document.execCommand("copy"); done(); } catch (err) { /* nothing to do */ }
        ta.remove();
      }
    }
    for (const b of document.querySelectorAll("button[data-copy]")) b.addEventListener("click", () => copy(b.dataset.copy));
    // Centre the 3x3 tiles on the place (the pin sits in the middle of the frame).
    const map = document.querySelector(".map");
    const grid = map && map.querySelector(".tiles");
    if (grid) {
      grid.style.left = `${map.clientWidth / 2 - Number(grid.dataset.x)}px`;
      grid.style.top = `${map.clientHeight / 2 - Number(grid.dataset.y)}px`;
    }
    const focus = (id) => { const el = document.getElementById(id); if (el) { el.focus(); el.scrollIntoView({ block: "center" }); } };
    keys.a = () => { const f = document.getElementById("form-acknowledge"); if (f) f.requestSubmit(); };
    keys.d = () => focus("unit");
    keys.f = () => focus("dismiss-reason");
    keys.r = () => focus("reopen-reason");
    keys.p = openPhoto;
    keys.c = () => copy(document.getElementById("geo-copy").dataset.copy);
    keys.Escape = keys.u = () => location.assign("/");
    localTimes();
    cw.clockOffset = 0;
    tickAges();
    setInterval(tickAges, 1000);
    openFeed(Number(article.dataset.cursor), (a) => {
      if (a.incident_id !== incident) {
        if (a.change === "received") cue("new");
        return;
      }
      const inputs = [...article.querySelectorAll("input:not([type=hidden])")];
      if (inputs.every((i) => !i.value)) { location.reload(); return; }
      const banner = document.getElementById("changed");
      banner.querySelector("b").textContent = a.actor;
      banner.hidden = false;
    });
  }

  if (page === "audit") localTimes();
})();
