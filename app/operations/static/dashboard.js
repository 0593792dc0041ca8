// The pipeline dashboard: reads GET /ops/stream with fetch() (so an admin token can go in the
// Authorization header, which EventSource cannot send) and draws each `state` event.
"use strict";

const TOKEN_KEY = "shop.dashboard.token";
const WINDOW_MS = 5 * 60 * 1000;  // the longest the chart spans; it starts at 30 s
const CHART = { width: 600, height: 160, top: 6, bottom: 18 };
const samples = [];
let retryMs = 1000;

function $(id) { return document.getElementById(id); }

function setStatus(state, text) {
  const pill = $("status");
  pill.dataset.state = state;
  pill.textContent = text || state;
}

function show(id, value, warn) {
  const element = $(id);
  element.textContent = value === null || value === undefined ? "–" : String(value);
  element.dataset.value = value === null || value === undefined ? "" : String(value);
  element.classList.toggle("warn", Boolean(warn));
}

function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname);  // off the address bar
  }
}

function askForToken(reason) {
  $("auth").dataset.open = "true";
  $("auth-reason").textContent = reason;
  setStatus("denied", "token needed");
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("auth-token").value.trim());
  $("auth").dataset.open = "false";
  connect();
});

function shortStream(stream) {
  const [kind, id] = stream.split(":");
  return id && id.length > 13 ? `${kind}:${id.slice(0, 8)}…` : stream;
}

function renderEvents(state) {
  const rows = state.recent_events.map((event) => {
    const row = document.createElement("tr");
    let badge = '<span class="badge">logged</span>';
    if (event.position <= state.applied_position) badge = '<span class="badge applied">applied</span>';
    else if (state.relay_position !== null && event.position <= state.relay_position) {
      badge = '<span class="badge published">published</span>';
    }
    const cells = [event.position, event.type, shortStream(event.stream),
                   new Date(event.occurred_at).toLocaleTimeString()];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      if (i === 2) { cell.className = "stream"; cell.title = event.stream; }
      row.appendChild(cell);
    });
    const stateCell = document.createElement("td");
    stateCell.innerHTML = badge;
    row.appendChild(stateCell);
    return row;
  });
  $("events").replaceChildren(...rows);
}

function line(points, key, now, spanMs) {
  const max = Math.max(1e-9, ...points.map((p) => p[key]));
  const span = CHART.height - CHART.top - CHART.bottom;
  return {
    max,
    points: points.map((p) => {
      const x = ((p.at - (now - spanMs)) / spanMs) * CHART.width;
      const y = CHART.top + span - (p[key] / max) * span;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(" "),
  };
}

function renderChart() {
  const now = Date.now();
  while (samples.length && samples[0].at < now - WINDOW_MS) samples.shift();
  const spanMs = Math.min(WINDOW_MS, Math.max(30000, now - samples[0].at));
  const events = line(samples, "events", now, spanMs);
  const seconds = line(samples, "seconds", now, spanMs);
  $("chart-span").textContent = `−${Math.round(spanMs / 1000)} s`;
  $("lag-events-line").setAttribute("points", events.points);
  $("lag-seconds-line").setAttribute("points", seconds.points);
  $("max-events").textContent = String(Math.round(events.max));
  $("max-seconds").textContent = seconds.max < 0.001 ? "0" : seconds.max.toFixed(3);
}

function render(state) {
  show("commands-per-second", state.commands_per_second);
  show("log-head", state.log_head);
  show("relay-position", state.relay_position);
  show("applied-position", state.applied_position);
  show("lag-events", state.lag_events, state.lag_events > 1000);
  show("lag-seconds", state.lag_seconds, state.lag_seconds > 1);
  show("held-streams", state.held_streams, state.held_streams > 0);
  show("parked-events", state.parked_events, state.parked_events > 0);
  show("open-streams", `${state.open_streams} / ${state.stream_limit}`);
  $("postgres").textContent = `postgres ${state.postgres === "ok" ? "ok" : "unreachable"}`;
  $("postgres").className = state.postgres === "ok" ? "badge applied" : "badge";
  $("updated-at").textContent = new Date(state.at).toLocaleTimeString();
  samples.push({ at: Date.now(), events: state.lag_events || 0, seconds: state.lag_seconds || 0 });
  renderChart();
  renderEvents(state);
}

// One SSE message ("field: value" lines) into {event, data}.
function parse(block) {
  const message = { event: "message", data: [] };
  for (const text of block.split("\n")) {
    if (text === "" || text.startsWith(":")) continue;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    const value = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
    if (field === "data") message.data.push(value);
    else if (field === "event") message.event = value;
  }
  return { event: message.event, data: message.data.join("\n") };
}

async function problemDetail(response) {
  try { return (await response.json()).detail; } catch (error) { return `HTTP ${response.status}`; }
}

async function connect() {
  const headers = { Accept: "text/event-stream" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  setStatus("connecting");
  let response;
  try {
    response = await fetch("/ops/stream", { headers, cache: "no-store" });
  } catch (error) {
    return reconnect(`unreachable: ${error}`);
  }
  if (response.status === 401 || response.status === 403) {
    return askForToken(await problemDetail(response));
  }
  if (!response.ok) return reconnect(await problemDetail(response));
  setStatus("live");
  retryMs = 1000;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const message = parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (message.event === "state" && message.data) render(JSON.parse(message.data));
      }
    }
  } catch (error) {
    return reconnect(`stream broken: ${error}`);
  }
  return reconnect("stream ended");
}

function reconnect(reason) {
  setStatus("error", reason);
  setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, 15000);
}

tokenFromFragment();
connect();
