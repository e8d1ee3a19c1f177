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
  login: sessionStorage.getItem("studio-login"), api: { kind: "local" }, sent: null, startedAt: null,
};
const HISTORY_KEY = "sdxl-studio-history", PRICE_KEY = "sdxl-studio-price", HISTORY_LENGTH = 20;

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
    const placeholder = field.required ? "What to draw, e.g. a lighthouse at dusk, oil painting" : (field.optional ? "unset" : "");
    return element("textarea", { ...common, rows: field.name === "prompt" ? 3 : 2, placeholder,
                                 "aria-required": field.required ? "true" : null });
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
      value: field.default === null ? "" : String(field.default),
      placeholder: field.default === null ? (field.unset ? `${field.unset} (unset)` : "unset") : "",
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
    const label = element("label", { for: `in-${field.name}`, text: field.label });
    if (field.required) label.append(element("span", { class: "required-mark", text: " (fill this in)" }));
    box.append(label, input,
      element("p", { class: "help", id: `help-${field.name}`, text: field.help, title: field.details }),
      element("p", { class: "error", id: `err-${field.name}`, hidden: true }));
    if (field.name === "seed") {
      box.insertBefore(element("div", { class: "field-buttons" },
        element("button", { type: "button", id: "seed-random", text: "Random",
                            "aria-label": "Random seed: leave the seed unset" }),
        element("button", { type: "button", id: "seed-last", text: "Last run's seed" })), box.querySelector(".help"));
    }
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
      if (value === "" || (value === String(field.default ?? "") && !field.always_send)) continue;
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
  const seconds = measured(data);
  $("progress-text").textContent = `Done in ${seconds.toFixed(1)} s`;
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
  // return_control_images: what steered the image, after the images, in the order of controlnets.
  (data.control_images || []).forEach((src, index) => {
    if (!SAFE_LINK.test(String(src))) return;  // its number stays its place in controlnets
    results.append(element("figure", { class: "result control" },
      element("img", { src, alt: `Control image ${index + 1}: what steered the image` }),
      element("figcaption", { text: `Control image ${index + 1} (controlnets[${index}])` })));
  });
  const timings = Object.entries(data.timings || {}).map(([stage, ms]) => `${stage} ${ms} ms`).join(", ");
  $("timings").textContent = timings ? `Timings: ${timings}` : "";
  showWarnings(data.warnings);
  showRaw(data);
  showCost(seconds);
  remember(data, seconds);
}

// The job's own time where the worker measured it (timings.total), else the time the page waited.
function measured(data) {
  return data.timings && data.timings.total ? data.timings.total / 1000 : data.seconds;
}

function showWarnings(warnings) {
  $("warnings").replaceChildren(...(warnings || []).map((text) => element("p", { text: `Note: ${text}` })));
  $("warnings").hidden = !(warnings && warnings.length);
}

// Long strings (images) cut short: the raw view shows the shape of the output, not megabytes of base64.
function shortened(value) {
  if (typeof value === "string" && value.length > 120) return `${value.slice(0, 60)}… (${value.length} characters)`;
  if (Array.isArray(value)) return value.map(shortened);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, shortened(v)]));
  return value;
}

function showRaw(data) {
  const { seconds, ...output } = data;  // "seconds" is the studio's own, not the worker's output
  $("raw-json").textContent = JSON.stringify(shortened(output), null, 2);
}

function price() {
  const value = Number(($("price").value || "").trim());
  return Number.isFinite(value) && value > 0 ? value : null;
}

function showCost(seconds) {
  const rate = price();
  $("cost").hidden = rate === null;
  if (rate !== null) {
    $("cost").textContent = `Cost: about $${(seconds * rate).toFixed(5)} (${seconds.toFixed(1)} s at $${rate} per GPU-second)`;
  }
}

// A progress bar without a value animates forever: a job that ended without images sets one.
function stopProgress() {
  if (!$("progress").hasAttribute("value")) $("progress").value = 0;
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
    notice: (data) => { $("progress-text").textContent = "Finishing: the images are on their way…"; showWarnings(data.warnings); },
    cancelled: () => ending(() => { stopProgress(); $("progress-text").textContent = "Cancelled."; }),
    error: (data) => ending(() => {
      stopProgress();
      $("progress-text").textContent = "The job failed.";
      showError(data.error);
      remember({ error: data.error }, null);
    }),
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
    if (!ended) ending(() => { stopProgress(); showError("The studio server closed the connection."); });
  } catch (error) {
    if (ended || error.name === "AbortError" || error instanceof LoginNeeded) { if (!ended) finish(); return; }
    ending(() => { stopProgress(); showError(`The studio server closed the connection (${error.message}).`); });
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
  showWarnings([]);
  $("cost").hidden = true;
  state.sent = JSON.parse(body).input;
  updateSnippets();
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
    stopProgress();
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
  state.api = form.api || { kind: "local" };
  drawForm(form.fields);
  $("runs-on").textContent = `Jobs run on ${form.runs_on}.`;
  updateSnippets();
  drawHistory();
}

// --- the same job from code: curl and Python, for this studio's worker or endpoint ---

const IMAGE_STAND_IN = "<an image: an https URL, a data URL or base64>";

function withoutImages(value) {
  if (typeof value === "string" && value.startsWith("data:")) return IMAGE_STAND_IN;
  if (Array.isArray(value)) return value.map(withoutImages);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutImages(v)]));
  return value;
}

function python(value, indent = "") {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string" || typeof value === "number") return JSON.stringify(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) return `[${value.map((item) => python(item, inner)).join(", ")}]`;
  const items = Object.entries(value).map(([key, item]) => `${inner}${JSON.stringify(key)}: ${python(item, inner)},`);
  return items.length ? `{\n${items.join("\n")}\n${indent}}` : "{}";
}

function currentInput() {
  try { return JSON.parse(jobInput()).input; } catch (problem) { return state.sent || {}; }
}

function updateSnippets() {
  const job = { input: withoutImages(currentInput()) };
  const body = JSON.stringify(job).replaceAll("'", "'\\''");
  const endpoint = state.api.kind === "endpoint";
  const base = endpoint ? state.api.url : "http://localhost:8000";
  const auth = endpoint ? ' \\\n  -H "Authorization: Bearer $RUNPOD_API_KEY"' : "";
  const curl = (route) => `curl -s -X POST ${base}/${route}${auth} \\\n  -H "Content-Type: application/json" \\\n  -d '${body}'`;
  $("api-where").textContent = endpoint
    ? `Your RunPod endpoint, ${state.api.url}, with your API key in RUNPOD_API_KEY.`
    : "This machine's worker through runpod's local API: start it with python handler.py --rp_serve_api (port 8000).";
  $("api-curl-sync").textContent = curl("runsync");
  $("api-curl-run").textContent = curl("run");
  $("api-python").textContent = endpoint
    ? ["import os", "", "import runpod", "", 'runpod.api_key = os.environ["RUNPOD_API_KEY"]',
       `runpod.endpoint_url_base = ${JSON.stringify(state.api.url.replace(/\/[^/]+$/, ""))}`,
       `endpoint = runpod.Endpoint(${JSON.stringify(state.api.url.split("/").pop())})`,
       `job = ${python(job)}`, "output = endpoint.run_sync(job, timeout=600)  # /runsync: the output, or None if it failed",
       "# or: run = endpoint.run(job); for chunk in run.stream(): ...; run.output()"].join("\n")
    : ["import requests", "", `job = ${python(job)}`,
       'answer = requests.post("http://localhost:8000/runsync", json=job, timeout=600).json()',
       'output = answer["output"]  # the previews, then the result last (HANDLER_MODE=stream)'].join("\n");
}

// --- this browser's runs: kept in localStorage, newest first ---

function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch (problem) { return []; }
}

function saveHistory(runs) {
  for (let kept = runs.slice(0, HISTORY_LENGTH); kept.length; kept = kept.slice(0, -1)) {
    try { localStorage.setItem(HISTORY_KEY, JSON.stringify(kept)); return; } catch (full) { /* drop the oldest */ }
  }
}

function remember(output, seconds) {
  const run = { at: new Date().toISOString(), input: withoutImages(state.sent || {}), seconds,
                seeds: output.seeds || (output.seed !== undefined ? [output.seed] : []),
                timings: output.timings || null, warnings: output.warnings || [], error: output.error || null,
                thumb: null };
  const first = (output.images || [])[0];
  const store = () => { saveHistory([run, ...history()]); drawHistory(); };
  if (!first || !String(first).startsWith("data:image/")) { store(); return; }
  const image = new Image();
  image.onload = () => {
    try {  // a small JPEG of the first image: the list stays within the browser's storage
      const canvas = document.createElement("canvas");
      const scale = 96 / Math.max(image.width, image.height);
      canvas.width = Math.round(image.width * scale);
      canvas.height = Math.round(image.height * scale);
      canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
      run.thumb = canvas.toDataURL("image/jpeg", 0.7);
    } catch (problem) { /* no thumbnail */ }
    store();
  };
  image.onerror = store;
  image.src = first;
}

function drawHistory() {
  const runs = history();
  $("history-list").replaceChildren(...runs.map((run, index) => {
    const what = run.error ? `Failed: ${run.error}` : `${run.input.prompt || "(no prompt)"} · seed ${run.seeds[0]}` +
      (run.seconds ? ` · ${run.seconds.toFixed(1)} s` : "");
    return element("li", { "data-index": String(index) },
      run.thumb ? element("img", { src: run.thumb, alt: `Run ${index + 1}` }) : "",
      element("span", { class: "what", text: what, title: what }),
      element("button", { type: "button", class: "show", text: "Show", "aria-label": `Show run ${index + 1}` }));
  }));
  $("clear-history").hidden = runs.length === 0;
}

function showRun(index) {
  const run = history()[index];
  if (!run) return;
  const detail = $("history-detail");
  detail.replaceChildren(
    element("p", { text: `${new Date(run.at).toLocaleString()} · ${run.error ? "failed" : `seeds ${run.seeds.join(", ")}`}` }),
    run.thumb ? element("img", { src: run.thumb, alt: "The run's first image, small" }) : "",
    element("pre", { class: "run-input", text: JSON.stringify(run.input, null, 2) }),
    element("pre", { class: "run-output", text: JSON.stringify({ seeds: run.seeds, timings: run.timings,
                                                                   warnings: run.warnings, error: run.error }, null, 2) }),
    element("div", { class: "field-buttons" },
      element("button", { type: "button", id: "reuse-settings", text: "Reuse these settings" }),
      element("button", { type: "button", id: "reuse-seed", text: "Reuse its seed", disabled: !run.seeds.length })));
  detail.hidden = false;
  $("reuse-settings").addEventListener("click", () => fillForm(run.input));
  $("reuse-seed").addEventListener("click", () => { $("in-seed").value = String(run.seeds[0]); updateSnippets(); });
}

// The form set to a run's input: each field the run set, every other back to its default.
function fillForm(input) {
  for (const field of state.fields) {
    const control = $(`in-${field.name}`);
    const value = input[field.name];
    if (field.kind === "image") continue;  // images are not kept in the history
    if (field.kind === "boolean") control.checked = value === undefined ? field.default === true : Boolean(value);
    else if (field.kind === "json") control.value = value === undefined ? "" : JSON.stringify(value);
    else control.value = value === undefined ? (field.default === null ? "" : String(field.default)) : String(value);
  }
  updateSnippets();
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
  $("job").addEventListener("input", updateSnippets);
  $("job").addEventListener("change", updateSnippets);
  $("history-list").addEventListener("click", (event) => {
    const item = event.target.closest("button.show") && event.target.closest("li");
    if (item) showRun(Number(item.dataset.index));
  });
  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_KEY);
    $("history-detail").hidden = true;
    drawHistory();
  });
  $("price").value = localStorage.getItem(PRICE_KEY) || "";
  $("price").addEventListener("input", () => localStorage.setItem(PRICE_KEY, $("price").value.trim()));
  document.addEventListener("click", (event) => {
    if (event.target.id === "seed-random") { $("in-seed").value = ""; updateSnippets(); }
    if (event.target.id === "seed-last") {
      const last = history().find((run) => run.seeds.length);
      if (last) { $("in-seed").value = String(last.seeds[0]); updateSnippets(); }
    }
  });
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
