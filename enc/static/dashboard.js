/* CityWatch ENC dashboard: live state on every page (server-sent events), ages that
   tick, new alerts announced on every page (title, toast, a sound cue that repeats until
   someone takes the alert), escalations shown to supervisors, keyboard shortcuts.
   No libraries but Leaflet for the map, nothing fetched from elsewhere. Untrusted text
   (labels, device names) only ever goes into textContent. */
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content;
  const csrf = meta("csrf-token");
  const role = meta("role");
  const escalateAfter = Number(meta("escalate-after-ms") || 120000);
  const repeatEvery = Number(meta("sound-repeat-ms") || 10000);
  const STATUS_WORDS = { new: "New", acknowledged: "Acknowledged", on_hold: "On hold", dispatched: "Dispatched", dismissed: "Dismissed", closed: "Closed" };
  const OPEN = new Set(["new", "acknowledged", "on_hold"]); // not handled yet
  const SEVERITY_WORDS = { 1: "Fight", 2: "Person down", 3: "Uncertain" };
  // Test and diagnostics hooks: what the page has done so far.
  const cw = (window.cw = { cues: [], loadedAt: Date.now(), events: 0, clockOffset: 0, toasts: 0, audioState: "none" });
  const state = new Map(); // incident id -> the alert as the server last said

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
  // Times are written by the server in the ENC's zone; the UTC instant is the tooltip.
  function utcTitles(root) {
    for (const t of (root || document).querySelectorAll("time[datetime]")) {
      t.title = t.getAttribute("datetime").replace("+00:00", " UTC");
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
      audio.addEventListener("statechange", showSound);
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
    if (!soundOn) return;
    const ctx = audioContext();
    if (!ctx) return;
    if (ctx.state !== "running") {
      ctx.resume().catch(() => {});
      const banner = document.getElementById("sound-blocked");
      if (banner && ctx.state !== "running") banner.hidden = false;
      showSound();
      return;
    }
    const t = ctx.currentTime + 0.05;
    if (kind.endsWith("escalated")) {
      for (let i = 0; i < 4; i++) tone(ctx, i % 2 ? 440 : 330, t + i * 0.25, 0.22, "square");
    } else {
      for (let i = 0; i < 3; i++) tone(ctx, i % 2 ? 660 : 880, t + i * 0.18, 0.15, "triangle");
    }
  }
  function unlockAudio() {
    if (!soundOn) return;
    const ctx = audioContext();
    if (ctx && ctx.state !== "running") ctx.resume().then(showSound, () => {});
    const banner = document.getElementById("sound-blocked");
    if (banner) banner.hidden = true;
  }
  document.addEventListener("pointerdown", unlockAudio);
  document.addEventListener("keydown", unlockAudio);
  function showSound() {
    const b = document.querySelector("#sound-toggle span");
    if (b) b.textContent = soundOn ? "on" : "off";
    cw.audioState = audio ? audio.state : "none";
    const enable = document.getElementById("sound-enable");
    // Visible until the browser lets the page play sound (it needs one click).
    if (enable) enable.hidden = !soundOn || (audio !== null && audio.state === "running");
    if (audio && audio.state === "running") {
      const banner = document.getElementById("sound-blocked");
      if (banner) banner.hidden = true;
    }
  }
  function toggleSound() {
    soundOn = !soundOn;
    localStorage.setItem("cw-sound", soundOn ? "on" : "off");
    if (soundOn) unlockAudio();
    showSound();
  }
  const soundButton = document.getElementById("sound-toggle");
  if (soundButton) soundButton.addEventListener("click", toggleSound);
  const enableButton = document.getElementById("sound-enable");
  if (enableButton) {
    enableButton.addEventListener("click", () => {
      if (!soundOn) toggleSound();
      unlockAudio();
      const ctx = audioContext();
      if (ctx) tone(ctx, 660, ctx.currentTime + 0.05, 0.12, "triangle"); // it works
    });
  }
  if (soundOn && csrf) audioContext(); // learn whether the browser lets it play yet
  showSound();

  // -- what is new, on every page ---------------------------------------------------------
  const baseTitle = document.title;
  const untaken = () => [...state.values()].filter((a) => a.status === "new");
  function showTitle() {
    const n = untaken().length;
    const esc = [...state.values()].filter((a) => a.escalated).length;
    document.title = n ? `(${n} new${esc ? `, ${esc} escalated` : ""}) ${baseTitle}` : baseTitle;
  }
  const toasts = document.getElementById("toasts");
  function toast(text, { href, kind, incident } = {}) {
    if (!toasts) return null;
    const t = document.createElement("div");
    t.className = `toast ${kind || ""}`;
    t.setAttribute("role", "alert");
    if (incident) t.dataset.incident = incident;
    const p = document.createElement(href ? "a" : "span");
    if (href) p.href = href;
    p.textContent = text;
    t.appendChild(p);
    const close = document.createElement("button");
    close.type = "button";
    close.className = "ghost close";
    close.textContent = "\u00d7";
    close.title = "Close";
    close.addEventListener("click", () => t.remove());
    t.appendChild(close);
    toasts.prepend(t);
    while (toasts.children.length > (page === "list" ? 3 : 5)) toasts.lastChild.remove();
    cw.toasts += 1;
    return t;
  }
  function announce(a) {
    if (page === "alert" && article && article.dataset.incident === a.incident_id) return;
    const r = a.report;
    // A report fused into an alert is not a new alert: it says which alert it joins.
    const text = r
      ? `New report on alert ${a.label_text} at ${a.device_uid}: ${r.label_text} at ${r.device_uid}, ${Math.round(r.score * 100)}% (P${a.priority}) \u2014 open it`
      : `New alert: ${a.label_text} (P${a.priority}) at ${a.device_uid}, ${Math.round(a.score * 100)}% \u2014 open it`;
    toast(text, { href: a.url, kind: `new prio-${a.priority}${r ? " linked" : ""}`, incident: a.incident_id });
  }
  function dropToasts() {
    // An alert someone took no longer calls for attention.
    if (!toasts) return;
    // A linked report's notice stays: the alert may be taken, the report is still news.
    for (const t of toasts.querySelectorAll(".toast.new:not(.linked)[data-incident]")) {
      const a = state.get(t.dataset.incident);
      if (a && a.status !== "new") t.remove();
    }
  }
  function showEscalations() {
    const box = document.getElementById("escalations");
    if (!box || role !== "supervisor") return;
    const list = box.querySelector("ul");
    const esc = [...state.values()].filter((a) => a.escalated);
    list.replaceChildren(...esc.map((a) => {
      const li = document.createElement("li");
      li.dataset.incident = a.incident_id;
      const link = document.createElement("a");
      link.href = a.url;
      link.textContent = `${a.label_text} at ${a.device_uid}`;
      li.appendChild(link);
      li.appendChild(document.createTextNode(a.status === "new"
        ? " \u2014 nobody has taken it" : ` \u2014 taken by ${a.taken_by}, not finished`));
      return li;
    }));
    box.hidden = esc.length === 0;
  }
  function refresh() { showTitle(); dropToasts(); showEscalations(); }
  // The cue repeats while an alert waits for someone to take it.
  setInterval(() => {
    const waiting = untaken();
    if (waiting.length) cue(waiting.some((a) => a.escalated) ? "repeat-escalated" : "repeat");
  }, repeatEvery);

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
  // An action from a script; a refusal (409 and friends) is said in a toast.
  function act(incident, payload) {
    return fetch(`/api/alerts/${encodeURIComponent(incident)}/actions`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
    }).then(async (r) => {
      let data = {};
      try { data = await r.json(); } catch (err) { /* not JSON */ }
      if (!r.ok) {
        const why = data.error || (r.status === 401 ? "you are logged out" : `refused (${r.status})`);
        toast(`Not done: ${why}.`, { kind: "refused" });
        return null;
      }
      return data;
    }, () => { toast("Not done: the ENC did not answer; try again.", { kind: "refused" }); return null; });
  }

  // -- maps (Leaflet, served by the ENC itself) -----------------------------------------
  const COLOURS = { new: "#ff4d4f", acknowledged: "#ffb020", on_hold: "#d29922", dispatched: "#3fb950", dismissed: "#8b949e", closed: "#6e7681" };
  cw.maps = {};
  function makeMap(el, name) {
    if (!el || !window.L) return null;
    const tiles = el.dataset.tiles;
    const m = L.map(el, { attributionControl: false, zoomSnap: 0.5 });
    if (tiles) L.tileLayer(tiles, { maxZoom: 19 }).addTo(m);
    else el.classList.add("plain"); // no tiles: a plain background with a grid, and the scale
    L.control.scale({ imperial: false }).addTo(m);
    const layer = L.layerGroup().addTo(m);
    const map = { m, layer, focus: null };
    cw.maps[name] = map;
    return map;
  }
  // The pole, and its street address when the server's registry sent one.
  function where(a) { return a.address ? `${a.device_uid}, ${a.address}` : a.device_uid; }
  function tip(text) { const s = document.createElement("span"); s.textContent = text; return s; }
  // The focused alert (red, with its accuracy circle) and the others around it.
  function plot(map, focus, others) {
    if (!map) return;
    map.layer.clearLayers();
    for (const a of others) {
      if (focus && a.incident_id === focus.incident_id) continue;
      L.circleMarker([a.lat, a.lon], { radius: 6, color: "#fff", weight: 1, fillColor: COLOURS[a.status] || "#888", fillOpacity: 0.9, className: "other" })
        .bindTooltip(tip(`${a.label_text} at ${where(a)} (${STATUS_WORDS[a.status]})`)).addTo(map.layer);
    }
    if (focus) {
      if (focus.acc) L.circle([focus.lat, focus.lon], { radius: focus.acc, color: "#ff4d4f", weight: 1, fillOpacity: 0.15, className: "accuracy" }).addTo(map.layer);
      L.circleMarker([focus.lat, focus.lon], { radius: 10, color: "#fff", weight: 3, fillColor: "#ff2d55", fillOpacity: 1, className: "focus" })
        .bindTooltip(tip(`${focus.label_text} at ${where(focus)}`), { permanent: true, direction: "right", offset: [12, 0] }).addTo(map.layer);
      if (!map.focus || map.focus !== focus.incident_id) {
        // The place, and the other alerts within 1.5 km of it.
        const at = L.latLng(focus.lat, focus.lon);
        const near = others.filter((a) => at.distanceTo([a.lat, a.lon]) < 1500).map((a) => [a.lat, a.lon]);
        // Centred on the place: bounds symmetric around it.
        const dLat = Math.max(0.0005, ...near.map((p) => Math.abs(p[0] - at.lat)));
        const dLon = Math.max(0.0005, ...near.map((p) => Math.abs(p[1] - at.lng)));
        map.m.fitBounds([[at.lat - dLat, at.lng - dLon], [at.lat + dLat, at.lng + dLon]], { maxZoom: 17, padding: [20, 20] });
      }
      map.focus = focus.incident_id;
    }
  }

  // -- the list ----------------------------------------------------------------------------
  const table = document.getElementById("alerts");
  const tbody = table && table.tBodies[0];
  function updateCounters() {
    if (!tbody) return;
    const rows = [...tbody.rows];
    const un = rows.filter((r) => OPEN.has(r.dataset.status)).length;
    const esc = rows.filter((r) => r.classList.contains("escalated") && OPEN.has(r.dataset.status)).length;
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
    tr.className = `alert status-${a.status} sev-${a.severity}`;
    if (a.escalated) tr.classList.add("escalated");
    tr.dataset.incident = a.incident_id;
    tr.dataset.receivedAt = a.received_at;
    tr.dataset.statusAt = a.status_at;
    tr.dataset.status = a.status;
    tr.dataset.priority = a.priority;
    tr.tabIndex = -1;
    cell(tr, "age").dataset.ageFrom = a.received_at;
    const st = cell(tr, "status");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = STATUS_WORDS[a.status] || a.status;
    st.appendChild(badge);
    if (a.taken_by) { const s = document.createElement("small"); s.textContent = " " + a.taken_by; st.appendChild(s); }
    const prio = document.createElement("span");
    prio.className = `prio prio-${a.priority}`;
    prio.textContent = `P${a.priority} ${SEVERITY_WORDS[a.priority]}`;
    cell(tr, "priority").appendChild(prio);
    const what = cell(tr, "what");
    const link = document.createElement("a");
    link.href = a.url;
    link.textContent = a.label_text;
    what.appendChild(link);
    cell(tr, "num", `${Math.round(a.score * 100)}%`);
    cell(tr, "device", a.device_uid);
    const place = cell(tr, "place");
    if (a.zone) { const z = document.createElement("span"); z.className = "zone"; z.textContent = a.zone; place.append(z, " "); }
    if (a.address) {
      const adr = document.createElement("span"); adr.className = "address"; adr.textContent = a.address;
      const c = document.createElement("small"); c.className = "coords"; c.textContent = `${a.lat.toFixed(5)}, ${a.lon.toFixed(5)}`;
      place.append(adr, " ", c);
    } else place.append(`${a.lat.toFixed(5)}, ${a.lon.toFixed(5)}`);
    const time = document.createElement("time");
    time.setAttribute("datetime", new Date(a.received_at).toISOString().replace(".000Z", "+00:00"));
    time.textContent = a.received_text;
    cell(tr, "time").appendChild(time);
    utcTitles(tr);
    return tr;
  }
  // The server's order (enc._handling.priority_key): unhandled first; escalated, then
  // by priority, then newest; handled ones newest first.
  function sortRows() {
    const handled = (r) => (OPEN.has(r.dataset.status) ? 0 : 1);
    const esc = (r) => (r.classList.contains("escalated") ? 0 : 1);
    const rows = [...tbody.rows].sort((x, y) =>
      handled(x) - handled(y) ||
      (handled(x) ? 0 : esc(x) - esc(y) || Number(x.dataset.priority) - Number(y.dataset.priority)) ||
      Number(y.dataset.receivedAt) - Number(x.dataset.receivedAt));
    for (const r of rows) tbody.appendChild(r);
  }
  // The list's filter (enc._filters.AlertFilter), applied to alerts arriving live too.
  const filter = table && table.dataset.filter ? JSON.parse(table.dataset.filter) : {};
  function matches(a) {
    if (filter.statuses && filter.statuses.length && !filter.statuses.includes(a.status)) return false;
    if (filter.labels && filter.labels.length && !filter.labels.includes(a.label)) return false;
    if (filter.zone && a.zone !== filter.zone) return false;
    if (filter.since != null && a.received_at < filter.since) return false;
    if (filter.until != null && a.received_at >= filter.until) return false;
    if (filter.text) {
      const hay = [a.incident_id, a.device_uid, a.label, a.label_text, a.taken_by || "", a.address || ""].join(" ").toLowerCase();
      if (!filter.text.toLowerCase().split(/\s+/).every((w) => hay.includes(w))) return false;
    }
    return true;
  }
  function upsert(a, fresh) {
    const old = [...tbody.rows].find((r) => r.dataset.incident === a.incident_id);
    if (!matches(a)) { if (old) old.remove(); updateCounters(); return; }
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

  let onPageAlert = () => {};
  let onPageReady = () => {};
  if (page === "list" && tbody) {
    cw.clockOffset = Number(table.dataset.now) - Date.now();
    tbody.addEventListener("click", (e) => {
      const tr = e.target.closest("tr.alert");
      if (tr && !e.target.closest("a")) location.assign(tr.querySelector("a").href);
    });
    onPageReady = (data) => {
      const sel = selected() && selected().dataset.incident;
      tbody.replaceChildren(...data.alerts.filter(matches).map((a) => renderRow(a)));
      if (sel) select([...tbody.rows].find((r) => r.dataset.incident === sel));
      tickAges();
      for (const a of data.alerts) state.set(a.incident_id, a);
      showWall();
    };
    onPageAlert = (a) => { upsert(a, a.change === "received"); showWall(); };
    // The wall display: the most urgent unhandled alert with its photo and the map.
    const wallMap = body.classList.contains("wall") ? makeMap(document.getElementById("wall-map"), "wall") : null;
    let wallShown = null;
    function showWall() {
      const panel = document.getElementById("wall-focus");
      if (!panel) return;
      const top = [...tbody.rows].find((r) => OPEN.has(r.dataset.status));
      const a = top && state.get(top.dataset.incident);
      panel.hidden = !a;
      if (!a) { wallShown = null; return; }
      const open = [...state.values()].filter((x) => OPEN.has(x.status));
      if (wallMap) plot(wallMap, a, open);
      document.getElementById("wall-title").textContent =
        `P${a.priority} ${a.label_text} at ${a.device_uid} \u2014 ${STATUS_WORDS[a.status]}${a.taken_by ? " by " + a.taken_by : ""}`;
      document.getElementById("wall-place").textContent =
        (a.address ? `${a.address} \u2014 ` : "") + `${a.lat.toFixed(6)}, ${a.lon.toFixed(6)}`;
      if (wallShown !== a.incident_id) {
        // Shown to the room: fetched (and recorded as a wall view) once per alert shown.
        document.getElementById("wall-photo").src = `${a.url}/photo.jpg?view=wall`;
        wallShown = a.incident_id;
      }
    }
    keys.j = keys.ArrowDown = () => move(1);
    keys.k = keys.ArrowUp = () => move(-1);
    keys.Enter = keys.o = () => { const tr = selected(); if (tr) location.assign(tr.querySelector("a").href); };
    keys.a = () => {
      const tr = selected();
      if (!tr) return;
      act(tr.dataset.incident, { action: "acknowledge", seen_status_at: Number(tr.dataset.statusAt) })
        .then((a) => { if (a && a.incident_id) upsert(a, false); });
    };
    utcTitles();
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
      // Fetched (and so recorded as viewed) only now, when someone asks to see it.
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
    // A key whose form is not there says why, instead of doing nothing.
    const why = () => {
      const n = document.getElementById("taken-notice") || document.getElementById("closed-notice");
      toast(`Not possible: ${n ? n.textContent.trim() : `the alert is ${STATUS_WORDS[article.dataset.status].toLowerCase()}.`}`, { kind: "refused" });
    };
    const focus = (id) => { const el = document.getElementById(id); if (el) { el.focus(); el.scrollIntoView({ block: "nearest" }); } else why(); };
    keys.a = () => { const f = document.getElementById("form-acknowledge"); if (f) f.requestSubmit(); else why(); };
    keys.d = () => focus("unit");
    keys.f = () => focus("dismiss-reason");
    keys.r = () => focus("reopen-reason");
    keys.n = () => focus("note-text");
    keys.p = openPhoto;
    keys.c = () => copy(document.getElementById("geo-copy").dataset.copy);
    keys.Escape = keys.u = () => location.assign("/");
    utcTitles();
    tickAges();
    setInterval(tickAges, 1000);
    const alertMap = makeMap(document.getElementById("map"), "alert");
    const here = () => state.get(incident) || {
      incident_id: incident, lat: Number(article.dataset.lat), lon: Number(article.dataset.lon),
      acc: Number(article.dataset.acc) || 0, label_text: document.getElementById("label-words").textContent,
      device_uid: document.getElementById("device").textContent, status: article.dataset.status,
      address: (() => { const d = document.getElementById("address"); return d && !d.dataset.none ? d.textContent : null; })() };
    onPageReady = () => plot(alertMap, here(), [...state.values()]);
    onPageAlert = (a) => {
      plot(alertMap, here(), [...state.values()]);
      if (a.incident_id !== incident || a.change === "received") return;
      if (a.change === "pole_address") { // said in place: nothing else changed
        const d = document.getElementById("address");
        d.textContent = a.address || "no address registered";
        d.classList.toggle("muted", !a.address);
        if (a.address) delete d.dataset.none; else d.dataset.none = "1";
        return;
      }
      if (a.change === "escalated") { // said in place: the forms are the same
        let line = document.getElementById("escalation");
        if (!line) {
          line = document.createElement("p");
          line.id = "escalation";
          line.className = "escalation";
          line.setAttribute("role", "alert");
          document.querySelector("#alert .title h1").after(line);
        }
        line.textContent = a.status === "new" ? "Escalated: nobody has taken this alert."
          : `Escalated: taken by ${a.taken_by} and not finished.`;
        return;
      }
      const inputs = [...article.querySelectorAll("input:not([type=hidden]):not([type=checkbox])")];
      // Reloaded to show what is allowed now, unless the operator is typing or looking.
      if (inputs.every((i) => !i.value) && !document.querySelector("dialog[open]")) { location.reload(); return; }
      const banner = document.getElementById("changed");
      banner.querySelector("b").textContent = a.actor;
      banner.hidden = false;
    };
  }

  if (page !== "list" && page !== "alert") utcTitles();

  // -- every page with a session: the alerts' state and the live feed -------------------
  if (csrf && page !== "login") {
    const pageCursor = Number((table || article || {}).dataset ? (table || article).dataset.cursor : NaN);
    fetch("/api/alerts?limit=200", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((data) => {
        cw.clockOffset = data.now - Date.now();
        for (const a of data.alerts) state.set(a.incident_id, a);
        onPageReady(data);
        // Away from the list, every alert still untaken is announced (after a reload too).
        if (page !== "list") untaken().slice(0, 5).reverse().forEach(announce);
        refresh();
        const cursor = Number.isFinite(pageCursor) ? Math.min(data.cursor, pageCursor) : data.cursor;
        openFeed(cursor, (a) => {
          const before = state.get(a.incident_id);
          state.set(a.incident_id, a);
          if (a.change === "received" && !before) { announce(a); cue("new"); }
          // A report that stands as an alert of its own is announced by that alert's "received".
          else if (a.change === "report_linked" && !(a.report && a.report.own_alert)) { announce(a); cue(a.escalated ? "escalated" : "new"); }
          else if (a.change === "escalated") cue("escalated");
          refresh();
          onPageAlert(a);
        });
        body.dataset.ready = "1";
      })
      .catch((status) => { if (status === 401) location.assign("/login"); });
  }
})();
