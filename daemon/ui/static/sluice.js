// The live parts of Sluice's pages, in plain JavaScript (no build step, nothing fetched from
// elsewhere). The server renders every part; this script only asks for it again when the daemon's
// event stream says something changed, follows step logs, and sends the buttons' and the run
// form's requests to the API (same origin, JSON, with the session cookie).
"use strict";

(() => {
  const REFRESH_EVERY_MS = 1000;  // at most one refresh of a part a second, however busy the system
  const POLL_EVERY_MS = 30000;  // events are a hint: the page is read again now and then anyway
  const LOG_LINES_KEPT = 5000;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  function toLogin() {
    const here = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(here));
  }

  function flash(message, kind = "error") {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.className = kind;
    box.hidden = false;
  }

  function errorText(body, response) {
    const error = body && body.error;
    if (!error) return `${response.status} ${response.statusText}`;
    const details = (error.details || []).map((d) =>
      typeof d === "string" ? d : [d.path || d.field || d.param, d.message].filter(Boolean).join(": "));
    // A message often already says what its one detail says: each is shown once.
    return [error.message, ...details.filter((line) => line && !error.message.includes(line))].join("\n");
  }

  async function send(method, url, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    init.headers["Content-Type"] = "application/json";
    if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
    const response = await fetch(url, init);
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(errorText(answer, response));
    return answer;
  }

  // Refreshing a live part, throttled: a change asks for a refresh within REFRESH_EVERY_MS (a
  // steady stream of changes still refreshes once a second), at most one request in flight, and
  // changes that come while one is running make one more after it.
  function liveRefresher(part) {
    let timer = null, running = false, again = false;
    async function load() {
      if (running) { again = true; return; }
      running = true;
      try {
        const response = await fetch(part.dataset.live, { credentials: "same-origin" });
        if (response.redirected && new URL(response.url).pathname === "/login") {
          toLogin();  // the session ended: back here (the page, not its live part) after logging in
          return;
        }
        if (response.ok) {
          const focused = document.activeElement && part.contains(document.activeElement)
            ? document.activeElement.getAttribute("href") : null;
          part.innerHTML = await response.text();
          if (focused) part.querySelector(`[href="${CSS.escape(focused)}"]`)?.focus();
          part.dispatchEvent(new CustomEvent("sluice:refreshed", { bubbles: true }));
        }
      } catch {
        // The daemon is unreachable for now: the next change or poll tries again.
      } finally {
        running = false;
        if (again) { again = false; schedule(); }
      }
    }
    function schedule() {
      if (timer !== null) return;
      timer = setTimeout(() => { timer = null; load(); }, REFRESH_EVERY_MS);
    }
    return schedule;
  }

  // A part that follows the daemon's changes while the tab is visible: the stream is closed when
  // the tab is hidden (a browser holds only six connections to a host) and once what it shows is
  // over (a finished run changes no more).
  function followChanges(part) {
    const refresh = liveRefresher(part);
    const state = document.querySelector("[data-live-state]");
    let events = null;
    // data-ends: the part's first status, once final, changes no more (a run's, a step's).
    const over = () =>
      part.dataset.ends !== undefined && FINAL.has(part.querySelector("[data-status]")?.dataset.status);
    function open() {
      if (events !== null || over()) return;
      events = new EventSource(part.dataset.events);
      events.addEventListener("run", refresh);
      events.addEventListener("step", refresh);
      // What happened before the stream opened (between rendering the page and the first open, or
      // while it was down) is read from the page itself.
      events.addEventListener("open", () => { refresh(); if (state) state.textContent = "live"; });
      events.addEventListener("error", () => {
        if (state) state.textContent = "reconnecting…";
        // A stream the browser gave up on (401: the session ended) is not retried by it: the live
        // part is read instead, which leads to the login page if that is why.
        if (events && events.readyState === EventSource.CLOSED) { close(); refresh(); }
      });
    }
    function close() { if (events !== null) { events.close(); events = null; } }
    part.addEventListener("sluice:refreshed", () => { if (over()) close(); });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) { close(); } else { open(); refresh(); }
    });
    setInterval(() => { if (!document.hidden && !over()) refresh(); }, POLL_EVERY_MS);
    open();
  }

  // A step's log as it is written: lines are added once per frame (a chatty step does not make the
  // page lay itself out per line), and only the last LOG_LINES_KEPT stay on the page (the full log
  // is a link away).
  function followLog(log) {
    const state = document.getElementById("log-state");
    const source = new EventSource(log.dataset.follow);
    let attempt = null, pending = [], frame = 0, kept = 0, trimmed = false;
    function flush() {
      frame = 0;
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(pending.join("")));
      kept += pending.length;
      pending = [];
      while (kept > LOG_LINES_KEPT && log.firstChild) {
        const first = log.firstChild;
        kept -= (first.textContent.match(/\n/g) || []).length;
        first.remove();
        trimmed = true;
      }
      if (trimmed) log.dataset.trimmed = "true";
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
    function add(text) {
      pending.push(text);
      if (!frame) frame = requestAnimationFrame(flush);
    }
    source.addEventListener("line", (event) => {
      const line = JSON.parse(event.data);
      if (line.attempt !== attempt) {
        attempt = line.attempt;
        add(`── attempt ${attempt} ──\n`);
        if (state) state.textContent = `following attempt ${attempt}…`;
      }
      add(line.line + "\n");
    });
    source.addEventListener("end", (event) => {
      source.close();
      if (frame) { cancelAnimationFrame(frame); flush(); }
      const end = JSON.parse(event.data);
      if (state) state.textContent = `the step ${end.status || "ended"}; the log is complete.`;
      log.dataset.complete = "true";
    });
    source.addEventListener("error", () => {
      if (log.dataset.complete) return;
      source.close();
      if (state) state.textContent = "the log stream was interrupted; reload the page to follow it again.";
    });
  }

  function paramValue(raw, type) {
    if (type === "integer" && /^-?\d+$/.test(raw)) return Number(raw);
    if (type === "number" && raw !== "" && Number.isFinite(Number(raw))) return Number(raw);
    if (type === "boolean") return raw === "true";
    if (type === "list") {
      if (raw.startsWith("[")) { try { return JSON.parse(raw); } catch { return raw; } }
      return raw.split(",").map((item) => item.trim()).filter(Boolean);
    }
    return raw; // a malformed value goes as typed: the API's error names the parameter
  }

  async function startRun(form) {
    const params = {};
    for (const input of form.querySelectorAll("[data-type]")) {
      const raw = input.value.trim();
      if (raw !== "") params[input.name] = paramValue(raw, input.dataset.type);
    }
    const body = { params, version: Number(form.dataset.version), reuse: form.elements.reuse.checked };
    const answer = await send("POST", form.dataset.url, body);
    location.assign(`/runs/${answer.run_id}`);
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.action");
    if (!button || button.disabled) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const answer = await send(button.dataset.method, button.dataset.url, button.dataset.body);
      if (answer.run_id) { location.assign(`/runs/${answer.run_id}`); return; }
      location.reload();
    } catch (error) {
      flash(error.message);
      button.disabled = false;
    }
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.id !== "start-run") return;
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await startRun(form);
    } catch (error) {
      flash(error.message);
      button.disabled = false;
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-live][data-events]").forEach(followChanges);
    const log = document.getElementById("log");
    if (log) followLog(log);
  });
})();
