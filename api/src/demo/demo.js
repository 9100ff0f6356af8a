// The demo page's script: submit with the pasted token, then follow the request's tokens
// through an EventSource opened with a stream token (an EventSource cannot send
// Authorization), or submit and follow over a WebSocket. Everything shown is set as text,
// never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  requestId: null,
  lastEventId: null,
  source: null,
  connections: 0,
  finished: false,
  templates: new Map(),
};

function show(status) {
  $("status").textContent = status;
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

function token() {
  return $("token").value.trim();
}

// The service's one error shape: {"error": {"code", "message"}}.
async function call(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const error = json && json.error ? json.error : {};
    throw new Error(`${response.status} ${error.code || ""}: ${error.message || "request failed"}`);
  }
  return json;
}

function parseJson(id, what) {
  const text = $(id).value.trim() || "{}";
  const value = JSON.parse(text);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`${what} must be a JSON object`);
  }
  return value;
}

function body() {
  const extra = parseJson("extra", "the rest of the body");
  if ($("mode-template").checked) {
    const params = parseJson("params", "the parameters");
    return Object.assign(extra, { template_id: $("template").value, params });
  }
  return Object.assign(extra, { prompt: $("prompt").value });
}

async function loadTemplates() {
  clearError();
  try {
    const listing = await call("GET", "/api/v1/prompts");
    const select = $("template");
    select.replaceChildren();
    state.templates = new Map();
    for (const template of listing.templates || []) {
      state.templates.set(template.id, template);
      const option = document.createElement("option");
      option.value = template.id;
      option.textContent = template.id + (template.description ? " — " + template.description : "");
      select.append(option);
    }
    $("mode-template").checked = true;
    switchMode();
    pickTemplate();
  } catch (err) {
    fail(err.message);
  }
}

// A template's example parameters, as a start.
function pickTemplate() {
  const template = state.templates.get($("template").value);
  if (template) {
    $("params").value = JSON.stringify(template.example || {}, null, 2);
  }
}

function switchMode() {
  const template = $("mode-template").checked;
  $("template-section").hidden = !template;
  $("prompt-section").hidden = template;
}

function useWebSocket() {
  return $("transport-ws").checked;
}

async function submit() {
  clearError();
  closeStream();
  state.requestId = null;
  state.lastEventId = null;
  state.finished = false;
  $("output").textContent = "";
  $("request-id").textContent = "—";
  $("last-event-id").textContent = "—";
  try {
    const request = body();
    show("submitting");
    if (useWebSocket()) {
      // Submitted over the socket: the token goes in its first message.
      const socket = openSocket("/api/v1/generate/ws");
      socket.addEventListener("open", () => {
        socket.send(JSON.stringify({ token: token(), request }));
      });
      return;
    }
    // ?stream=true: the worker relays the tokens, so the stream shows them one by one.
    const accepted = await call("POST", "/api/v1/generate?stream=true", request);
    state.requestId = accepted.request_id;
    $("request-id").textContent = state.requestId;
    await openStream();
  } catch (err) {
    show("failed");
    fail(err.message);
  }
}

// One event of the stream, from either transport.
function onEvent(name, id, data) {
  if (id !== null && id !== undefined && id !== "") {
    state.lastEventId = String(id);
    $("last-event-id").textContent = state.lastEventId;
  }
  if (name === "start") {
    state.requestId = data.request_id;
    $("request-id").textContent = state.requestId;
    show("streaming (" + data.model + ")");
  } else if (name === "token") {
    $("output").textContent += data.text;
  } else if (name === "restart") {
    // The output starts over (a retry or a fallback): what was shown is dropped.
    $("output").textContent = "";
  } else if (name === "done") {
    finish("done (" + data.finish_reason + ")");
  } else if (name === "error") {
    finish("failed");
    fail(data.code + ": " + data.message);
  }
}

// A fresh stream token, and the request's stream resumed after the last event seen (the
// query's last_event_id: a new EventSource or WebSocket sends no Last-Event-ID of its own).
async function openStream() {
  closeStream();
  const grant = await call("POST", `/api/v1/generate/${state.requestId}/stream-token`);
  let url = grant.stream_url;
  if (state.lastEventId !== null) {
    url += "&last_event_id=" + encodeURIComponent(state.lastEventId);
  }
  if (useWebSocket()) {
    openSocket(url.replace("/stream?", "/ws?"));
    return;
  }
  const source = new EventSource(url);
  state.source = source;
  connected();
  source.addEventListener("open", () => show("streaming"));
  for (const name of ["start", "token", "restart", "done"]) {
    source.addEventListener(name, (event) => onEvent(name, event.lastEventId, JSON.parse(event.data)));
  }
  source.addEventListener("error", (event) => {
    if (event.data !== undefined) {
      // The stream's own terminal event: the request failed or was cancelled.
      onEvent("error", event.lastEventId, JSON.parse(event.data));
      return;
    }
    if (source.readyState === EventSource.CLOSED && !state.finished) {
      // Refused (e.g. the stream token expired): a new token, resuming where it stopped.
      show("reconnecting");
      openStream().catch((err) => fail(err.message));
    } else if (!state.finished) {
      // The browser reconnects by itself, sending Last-Event-ID.
      show("reconnecting");
    }
  });
}

// A WebSocket on this server: messages {"event", "id", "data"}, or the one error body.
function openSocket(path) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + path);
  state.source = socket;
  connected();
  socket.addEventListener("open", () => show("streaming"));
  socket.addEventListener("message", (message) => {
    const value = JSON.parse(message.data);
    if (value.error) {
      finish("failed");
      fail(value.error.code + ": " + value.error.message);
    } else {
      onEvent(value.event, value.id, value.data);
    }
  });
  socket.addEventListener("close", () => {
    if (state.source === socket && !state.finished) {
      show("disconnected: Reconnect resumes");
    }
  });
  return socket;
}

function connected() {
  state.connections += 1;
  $("connections").textContent = String(state.connections);
  $("reconnect").disabled = false;
  $("stop").disabled = false;
  show("connecting");
}

function finish(status) {
  state.finished = true;
  closeStream();
  show(status);
}

function closeStream() {
  if (state.source) {
    state.source.close();
    state.source = null;
  }
  $("reconnect").disabled = state.requestId === null || state.finished;
  $("stop").disabled = true;
}

function reconnect() {
  if (state.requestId === null) return;
  clearError();
  state.finished = false;
  openStream().catch((err) => fail(err.message));
}

function stop() {
  closeStream();
  show("closed");
}

document.addEventListener("DOMContentLoaded", () => {
  // A token may come in the fragment (#token=…), which is never sent to a server; it is
  // taken out of the address at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    $("token").value = fragment.get("token");
    history.replaceState(null, "", location.pathname);
  }
  $("submit").addEventListener("click", submit);
  $("reconnect").addEventListener("click", reconnect);
  $("stop").addEventListener("click", stop);
  $("load-templates").addEventListener("click", loadTemplates);
  $("template").addEventListener("change", pickTemplate);
  $("mode-prompt").addEventListener("change", switchMode);
  $("mode-template").addEventListener("change", switchMode);
});
