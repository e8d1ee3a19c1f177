// The studio page: a form drawn from the worker's input schema (/api/form), a job started with
// POST /api/jobs, its previews and result read from Server-Sent Events, Cancel as a POST.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { fields: [], images: {}, job: null, events: null, starting: false, lastImageField: "image" };
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
  if (state.events) state.events.close();
  state.events = null;
  state.starting = false;
  state.job = null;
  running(false);
}

function watch(id) {
  const events = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  state.events = events;
  // The job's end closes this stream before anything else, so an error while showing the end can
  // never leave it reconnecting (EventSource reconnects a stream the server closed).
  const ending = (handle) => (event) => {
    events.close();
    try { handle(event); } finally { finish(); }
  };
  events.addEventListener("progress", (event) => setProgress(JSON.parse(event.data)));
  events.addEventListener("status", (event) => {
    const status = JSON.parse(event.data).status;
    $("progress-text").textContent = status === "IN_QUEUE" ? "In the endpoint's queue…" : "Running on the endpoint…";
  });
  events.addEventListener("preview", (event) => {
    const data = JSON.parse(event.data);
    setProgress(data);
    $("preview-frame").hidden = false;
    $("preview").src = data.preview;
    $("preview").dataset.step = data.step;
    $("preview-caption").textContent = `Preview after step ${data.step} of ${data.total_steps} (${data.stage})`;
  });
  events.addEventListener("result", ending((event) => showResult(JSON.parse(event.data))));
  events.addEventListener("cancelled", ending(() => { $("progress-text").textContent = "Cancelled."; }));
  events.addEventListener("error", (event) => {
    if (event.data) {  // the job's own error
      ending(() => { $("progress-text").textContent = "The job failed."; showError(JSON.parse(event.data).error); })(event);
    } else if (events.readyState === EventSource.CLOSED) {  // the connection, and EventSource gave up
      ending(() => showError("The studio server closed the connection."))(event);
    }
  });
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
    const answer = await fetch("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    const reply = await answer.json();
    if (!answer.ok) throw new Error(reply.detail || `HTTP ${answer.status}`);
    state.job = reply.id;
    watch(reply.id);
  } catch (error) {
    showError(`Could not start the job: ${error.message}`);
    state.starting = false;
    running(false);
  }
}

async function cancel() {
  if (!state.job) return;
  $("progress-text").textContent = "Cancelling…";
  await fetch(`/api/jobs/${encodeURIComponent(state.job)}/cancel`, { method: "POST" });
}

async function start() {
  const answer = await fetch("/api/form");
  const form = await answer.json();
  state.fields = form.fields;
  drawForm(form.fields);
  $("runs-on").textContent = `Jobs run on ${form.runs_on}.`;
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
    if (state.job) navigator.sendBeacon(`/api/jobs/${encodeURIComponent(state.job)}/cancel`);
  });
  document.body.dataset.ready = "true";
}

start().catch((error) => { $("runs-on").textContent = `The studio could not load its form: ${error.message}`; });
