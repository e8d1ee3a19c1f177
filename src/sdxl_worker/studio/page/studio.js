// The studio page: a form drawn from the worker's input schema (/api/form), a job started with
// POST /api/jobs, its previews and result read from Server-Sent Events, Cancel as a POST.
// Every API call carries the key the server put in this page (and the login, when it asks for
// one): the server answers nothing else, so no other site can drive it (docs/security.md).
"use strict";

const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const KEY = meta("studio-key");
const state = {
  fields: [], images: {}, job: null, events: null, starting: false, lastImageField: "image",
  login: sessionStorage.getItem("studio-login"),
};

class LoginNeeded extends Error {}

// A call to the studio's API: same origin, the key and the login in headers, no caching.
async function api(path, options = {}) {
  const headers = { "X-Studio-Key": KEY, ...(options.headers || {}) };
  if (state.login) headers["X-Studio-Login"] = state.login;
  const answer = await fetch(path, { ...options, headers, credentials: "same-origin", cache: "no-store" });
  if (answer.status === 401) {
    const reply = await answer.json().catch(() => ({}));
    askLogin(reply.detail || "This studio asks for its login.");
    throw new LoginNeeded(reply.detail);
  }
  return answer;
}
const NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;  // JSON's own number grammar
const SAFE_LINK = /^(data:image\/|https?:\/\/)/;  // what a result's image may be: inline, or a bucket's URL

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value; else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// --- the form ---

function control(field) {
  const id = `in-${field.name}`;
  const described = `help-${field.name} err-${field.name}`;
  const common = { id, name: field.name, "aria-describedby": described };
  if (field.kind === "long_text") {
    return element("textarea", { ...common, rows: field.name === "prompt" ? 3 : 2, placeholder: field.optional ? "unset" : "" });
  }
  if (field.kind === "json") {
    return element("textarea", { ...common, rows: 2, spellcheck: "false", placeholder: "JSON, e.g. [] or {}" });
  }
  if (field.kind === "choice") {
    const select = element("select", common);
    if (field.default === null) select.append(element("option", { value: "", text: "unset (the worker chooses)" }));
    for (const option of field.options) {
      select.append(element("option", { value: option, text: option, selected: option === field.default }));
    }
    return select;
  }
  if (field.kind === "boolean") {
    return element("input", { ...common, type: "checkbox", checked: field.default === true });
  }
  if (field.kind === "number") {
    return element("input", {
      ...common, type: "text", inputmode: field.step === 1 || field.step === 8 ? "numeric" : "decimal",
      value: field.default === null ? "" : String(field.default), placeholder: field.default === null ? "unset" : "",
    });
  }
  if (field.kind === "image") return imagePicker(field, common);
  return element("input", { ...common, type: "text", placeholder: field.optional ? "unset" : "" });
}

function imagePicker(field, common) {
  const file = element("input", { ...common, type: "file", accept: "image/*", class: "visually-hidden" });
  const zone = element("div", { class: "drop", tabindex: "-1", "data-field": field.name },
    element("span", { text: "Choose a file, drop one here, or paste" }));
  const clear = element("button", { type: "button", text: "Clear", hidden: true, "aria-label": `Clear ${field.label}` });
  const show = (dataUrl) => {
    state.images[field.name] = dataUrl;
    zone.querySelector("img")?.remove();
    if (dataUrl) zone.append(element("img", { src: dataUrl, alt: `${field.label} chosen` }));
    clear.hidden = !dataUrl;
  };
  const read = (blob) => {
    if (!blob || !blob.type.startsWith("image/")) return;
    const reader = new FileReader();
    reader.onload = () => show(reader.result);
    reader.readAsDataURL(blob);
  };
  file.addEventListener("change", () => read(file.files[0]));
  file.addEventListener("focus", () => { state.lastImageField = field.name; });
  zone.addEventListener("click", () => file.click());
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault(); zone.classList.remove("over"); state.lastImageField = field.name;
    read(event.dataTransfer.files[0]);
  });
  clear.addEventListener("click", () => { file.value = ""; show(null); });
  const wrap = element("div", {}, file, zone, clear);
  wrap.pick = read;
  return wrap;
}

function drawForm(fields) {
  for (const field of fields) {
    const box = element("div", { class: "field", id: `field-${field.name}` });
    const input = control(field);
    if (field.kind === "long_text" || field.kind === "json" || field.kind === "image") box.classList.add("wide");
    box.append(element("label", { for: `in-${field.name}`, text: field.label }), input,
      element("p", { class: "help", id: `help-${field.name}`, text: field.help, title: field.details }),
      element("p", { class: "error", id: `err-${field.name}`, hidden: true }));
    $(field.group === "main" ? "main-fields" : "more-fields").append(box);
    if (field.kind === "image") state.images[field.name] = null;
  }
}

// Only what differs from the schema's default is sent, so the worker's own rules for unset
// fields (and a preset's defaults) apply as they would to an API call.
function jobInput() {
  const parts = [];
  for (const field of state.fields) {
    const input = $(`in-${field.name}`);
    let text = null;
    if (field.kind === "image") {
      if (state.images[field.name]) text = JSON.stringify(state.images[field.name]);
    } else if (field.kind === "boolean") {
      if (input.checked !== (field.default === true)) text = String(input.checked);
    } else {
      const value = input.value.trim();
      if (value === "" || value === String(field.default ?? "")) continue;
      if (field.kind === "number") {
        // Numbers go as written, so a 19-digit seed keeps every digit; anything else goes as text
        // and the worker names the field.
        text = NUMBER.test(value) ? value : JSON.stringify(value);
      } else if (field.kind === "json") {
        try { JSON.parse(value); text = value; } catch (error) {
          throw { field: field.name, message: `'${field.name}' is not valid JSON: ${error.message}.` };
        }
      } else {
        text = JSON.stringify(value);
      }
    }
    if (text !== null) parts.push(`${JSON.stringify(field.name)}: ${text}`);
  }
  return `{"input": {${parts.join(", ")}}}`;
}

// --- errors next to the fields they name ---

function clearErrors() {
  for (const node of document.querySelectorAll(".field.invalid")) node.classList.remove("invalid");
  for (const node of document.querySelectorAll(".error")) { node.hidden = true; node.textContent = ""; }
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showError(message) {
  message = typeof message === "string" ? message : JSON.stringify(message);
  // The worker's errors are sentences naming the field in quotes: 'width' must be ...
  const sentences = message.split(/(?<=\.)\s+(?=')/);
  const general = [];
  for (const sentence of sentences.map((s) => s.trim()).filter(Boolean)) {
    const named = [...sentence.matchAll(/'([A-Za-z_0-9]+)/g)].map((m) => m[1]).find((name) => $(`field-${name}`));
    if (!named) { general.push(sentence); continue; }
    const box = $(`field-${named}`), slot = $(`err-${named}`);
    box.classList.add("invalid");
    $(`in-${named}`).setAttribute("aria-invalid", "true");
    slot.textContent = slot.textContent ? `${slot.textContent} ${sentence}` : sentence;
    slot.hidden = false;
    if (box.closest("details")) box.closest("details").open = true;
  }
  if (general.length) { $("form-error").textContent = general.join(" "); $("form-error").hidden = false; }
  const first = document.querySelector(".field.invalid input, .field.invalid select, .field.invalid textarea");
  if (first) first.focus();
}

// --- running a job ---

function running(on) {
  $("generate").disabled = on;
  $("cancel").disabled = !on;
  $("job").setAttribute("aria-busy", on ? "true" : "false");
}

function setProgress(data) {
  $("progress").max = data.total_steps;
  $("progress").value = data.step;
  $("progress-text").textContent = `Step ${data.step} of ${data.total_steps} · ${data.stage}`;
}

function showResult(data) {
  $("preview-frame").hidden = true;  // the final image takes the preview's place
  $("progress").value = $("progress").max;
  $("progress-text").textContent = `Done in ${data.seconds.toFixed(1)} s`;
  const results = $("results");
  results.replaceChildren();
  const seeds = data.seeds || [data.seed];
  data.images.filter((src) => SAFE_LINK.test(String(src))).forEach((src, index) => {
    const seed = seeds[index];
    const kind = (src.match(/^data:image\/(\w+)/) || [null, "png"])[1];
    const name = `sdxl-${seed}.${kind === "jpeg" ? "jpg" : kind}`;
    results.append(element("figure", { class: "result" },
      element("img", { src, alt: `Generated image ${index + 1}, seed ${seed}` }),
      element("figcaption", {},
        element("span", { class: "seed", text: `Seed ${seed} · ` }),
        element("a", { href: src, download: name, text: `Download ${name}` }))));
  });
  const timings = Object.entries(data.timings || {}).map(([stage, ms]) => `${stage} ${ms} ms`).join(", ");
  $("timings").textContent = timings ? `Timings: ${timings}` : "";
  if (data.warnings && data.warnings.length) $("timings").textContent += ` · ${data.warnings.join(" ")}`;
}

function finish() {
  if (state.events) state.events.abort();
  state.events = null;
  state.starting = false;
  state.job = null;
  running(false);
}

// The job's events, read from a streamed fetch (an EventSource could not send the key).
async function watch(id) {
  const controller = new AbortController();
  state.events = controller;
  let ended = false;
  const ending = (handle) => { ended = true; controller.abort(); try { handle(); } finally { finish(); } };
  const handlers = {
    progress: (data) => setProgress(data),
    status: (data) => {
      $("progress-text").textContent = data.status === "IN_QUEUE" ? "In the endpoint's queue…" : "Running on the endpoint…";
    },
    preview: (data) => {
      setProgress(data);
      $("preview-frame").hidden = false;
      $("preview").src = data.preview;
      $("preview").dataset.step = data.step;
      $("preview-caption").textContent = `Preview after step ${data.step} of ${data.total_steps} (${data.stage})`;
    },
    result: (data) => ending(() => showResult(data)),
    cancelled: () => ending(() => { $("progress-text").textContent = "Cancelled."; }),
    error: (data) => ending(() => { $("progress-text").textContent = "The job failed."; showError(data.error); }),
  };
  try {
    const answer = await api(`/api/jobs/${encodeURIComponent(id)}/events`, { signal: controller.signal });
    if (!answer.ok) throw new Error((await answer.json().catch(() => ({}))).detail || `HTTP ${answer.status}`);
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!ended) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while (!ended && (cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (handlers[name]) handlers[name](JSON.parse(data));
      }
    }
    if (!ended) ending(() => showError("The studio server closed the connection."));
  } catch (error) {
    if (ended || error.name === "AbortError" || error instanceof LoginNeeded) { if (!ended) finish(); return; }
    ending(() => showError(`The studio server closed the connection (${error.message}).`));
  }
}

async function generate(event) {
  event.preventDefault();
  if (state.job || state.starting) return;  // Ctrl+Enter while a job starts: one job
  state.starting = true;
  clearErrors();
  let body;
  try { body = jobInput(); } catch (problem) { state.starting = false; showError(problem.message); return; }
  running(true);
  $("results").replaceChildren();
  $("preview-frame").hidden = true;
  $("timings").textContent = "";
  $("progress").removeAttribute("value");
  $("progress-text").textContent = "Starting…";
  try {
    const answer = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    const reply = await answer.json();
    if (!answer.ok) throw new Error(reply.detail || `HTTP ${answer.status}`);
    state.job = reply.id;
    watch(reply.id);
  } catch (error) {
    if (!(error instanceof LoginNeeded)) showError(`Could not start the job: ${error.message}`);
    state.starting = false;
    running(false);
  }
}

async function cancel() {
  if (!state.job) return;
  $("progress-text").textContent = "Cancelling…";
  await api(`/api/jobs/${encodeURIComponent(state.job)}/cancel`, { method: "POST" });
}

// --- the login, when the studio is open to the network ---

function askLogin(message) {
  $("job").hidden = true;
  $("output").hidden = true;
  $("login").hidden = false;
  if (state.login) { $("login-error").textContent = message; $("login-error").hidden = false; }
  state.login = null;
  sessionStorage.removeItem("studio-login");
  $("runs-on").textContent = "Log in to use this studio.";
  $("in-login").focus();
}

async function logIn(event) {
  event.preventDefault();
  state.login = $("in-login").value;
  $("login-error").hidden = true;
  try {
    await loadForm();
    sessionStorage.setItem("studio-login", state.login);
    $("login").hidden = true;
    $("job").hidden = false;
    $("output").hidden = false;
  } catch (error) {
    if (!(error instanceof LoginNeeded)) throw error;
  }
}

async function loadForm() {
  const answer = await api("/api/form");
  if (!answer.ok) throw new Error((await answer.json().catch(() => ({}))).detail || `HTTP ${answer.status}`);
  const form = await answer.json();
  if (state.fields.length) return;  // drawn already (a login after a refused call)
  state.fields = form.fields;
  drawForm(form.fields);
  $("runs-on").textContent = `Jobs run on ${form.runs_on}.`;
}

async function start() {
  $("login").addEventListener("submit", (event) => logIn(event).catch((error) => showError(error.message)));
  if (meta("studio-login") === "required" && !state.login) {
    askLogin("");
  } else {
    try { await loadForm(); } catch (error) { if (!(error instanceof LoginNeeded)) throw error; }
  }
  $("job").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("job").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate(event);
  });
  document.addEventListener("paste", (event) => {
    if (event.target.closest && event.target.closest("textarea, input[type=text]")) return;  // text goes in text boxes
    const item = [...(event.clipboardData?.items || [])].find((entry) => entry.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    const box = $(`field-${state.lastImageField}`);
    const picker = $(`in-${state.lastImageField}`)?.parentElement;
    if (!box || !picker || !picker.pick) return;
    if (box.closest("details")) box.closest("details").open = true;  // show where it went: the job changes
    picker.pick(item.getAsFile());
    $("progress-text").textContent = `Pasted image set as ${state.lastImageField}.`;
  });
  // A file dropped beside a drop box must not make the browser leave the page (and the form).
  for (const kind of ["dragover", "drop"]) document.addEventListener(kind, (event) => event.preventDefault());
  // Closing or leaving the page cancels its running job (the server also cancels a job nobody watches).
  window.addEventListener("pagehide", () => {
    if (state.job) api(`/api/jobs/${encodeURIComponent(state.job)}/cancel`, { method: "POST", keepalive: true });
  });
  document.body.dataset.ready = "true";
}

start().catch((error) => { $("runs-on").textContent = `The studio could not load its form: ${error.message}`; });
