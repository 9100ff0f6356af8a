// The demo page's script: submit with the pasted token, then follow the request's tokens
// through an EventSource opened with a stream token (an EventSource cannot send
// Authorization). Everything shown is set as text, never as HTML.
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

async function submit() {
  clearError();
  closeStream();
  state.requestId = null;
  state.lastEventId = null;
  state.finished = false;
  $("output").textContent = "";
  $("last-event-id").textContent = "—";
  try {
    show("submitting");
    // ?stream=true: the worker relays the tokens, so the stream shows them one by one.
    const accepted = await call("POST", "/api/v1/generate?stream=true", body());
    state.requestId = accepted.request_id;
    $("request-id").textContent = state.requestId;
    await openStream();
  } catch (err) {
    show("failed");
    fail(err.message);
  }
}

// A fresh stream token, and an EventSource resuming after the last event seen (the query's
// last_event_id: a new EventSource sends no Last-Event-ID of its own).
async function openStream() {
  closeStream();
  const grant = await call("POST", `/api/v1/generate/${state.requestId}/stream-token`);
  let url = grant.stream_url;
  if (state.lastEventId !== null) {
    url += "&last_event_id=" + encodeURIComponent(state.lastEventId);
  }
  const source = new EventSource(url);
  state.source = source;
  state.connections += 1;
  $("connections").textContent = String(state.connections);
  $("reconnect").disabled = false;
  $("stop").disabled = false;
  show("connecting");

  const seen = (event) => {
    if (event.lastEventId) {
      state.lastEventId = event.lastEventId;
      $("last-event-id").textContent = event.lastEventId;
    }
  };
  source.addEventListener("open", () => show("streaming"));
  source.addEventListener("start", (event) => {
    const start = JSON.parse(event.data);
    show("streaming (" + start.model + ")");
  });
  source.addEventListener("token", (event) => {
    seen(event);
    $("output").textContent += JSON.parse(event.data).text;
  });
  source.addEventListener("restart", (event) => {
    // The output starts over (a retry or a fallback): what was shown is dropped.
    seen(event);
    $("output").textContent = "";
  });
  source.addEventListener("done", (event) => {
    seen(event);
    const done = JSON.parse(event.data);
    finish("done (" + done.finish_reason + ")");
  });
  source.addEventListener("error", (event) => {
    if (event.data !== undefined) {
      // The stream's own terminal event: the request failed or was cancelled.
      seen(event);
      const error = JSON.parse(event.data);
      finish("failed");
      fail(error.code + ": " + error.message);
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
