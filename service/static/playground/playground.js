// rnn-serve playground: calls the service's own API (same origin) and draws what it answers.
import { heatmap, lineChart } from "./charts.js";

const $ = (id) => document.getElementById(id);

// -- the API ----------------------------------------------------------------------------------

function headers() {
  const result = { "content-type": "application/json" };
  const token = $("auth-token").value.trim();
  if (token) result.authorization = `Bearer ${token}`;
  return result;
}

export class ApiError extends Error {}

// The message of an error answer: a validation error names each field and its limit.
async function errorMessage(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).join(".") || "body"}: ${e.msg}`).join("\n");
  }
  const first = Array.isArray(body) ? body[0] : body;
  const message = first && (first.error || first.message);
  return `${response.status} ${response.statusText}${message ? `: ${message}` : ""}`;
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw new ApiError(await errorMessage(response));
  return response.json();
}

// Server-sent events from a fetch response (EventSource cannot POST): yields {event, data} per
// event; data lines are joined by newlines, comments skipped.
export async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const event = parseEvent(block);
      if (event) yield event;
    }
  }
  const last = parseEvent(buffer);
  if (last) yield last;
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length || event !== "message" ? { event, data: data.join("\n") } : null;
}

// A stream event's payload: {text, logprobs} as JSON (with logprobs), else the text itself.
export function chunkOf(data) {
  try {
    const parsed = JSON.parse(data);
    if (parsed && typeof parsed === "object" && typeof parsed.text === "string") return parsed;
  } catch { /* plain text */ }
  return { text: data, logprobs: [] };
}

function showError(panel, error) {
  const element = $(`${panel}-error`);
  if (error) {
    element.textContent = error instanceof ApiError ? error.message : `Request failed: ${error.message}`;
    element.hidden = false;
  } else {
    element.textContent = "";
    element.hidden = true;
  }
}

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

const format = (value, digits = 3) => value.toFixed(digits);

// -- sentiment ----------------------------------------------------------------------------------

function shade(rgbVariable, alpha) {
  const rgb = getComputedStyle(document.documentElement).getPropertyValue(rgbVariable).trim();
  return `rgba(${rgb}, ${alpha.toFixed(3)})`;
}

async function explainSentiment() {
  showError("sentiment", null);
  const text = $("sentiment-text").value;
  try {
    const [result] = await post("/sentiment", { texts: [text], explain: true });
    renderSentiment(result);
  } catch (error) {
    showError("sentiment", error);
  }
}

function renderSentiment(result) {
  const positive = result.probabilities.positive;
  $("sentiment-label").textContent =
    `${result.label} (P(positive) = ${format(positive)}, ${result.tokens.length} words read)`;
  const chart = $("sentiment-chart");
  chart.replaceChildren(lineChart(result.tokens, result.trajectory, {
    description: `P(positive) after each of ${result.tokens.length} words, ending at ${format(positive)}`,
    pointTitle: (i) => `after "${result.tokens[i]}": P(positive) = ${format(result.trajectory[i])}`,
  }));
  const largest = Math.max(1e-9, ...result.importance.map(Math.abs));
  const words = result.tokens.map((token, i) => {
    const span = document.createElement("span");
    const importance = result.importance[i];
    span.textContent = token;
    span.className = "word";
    span.title = `importance ${importance >= 0 ? "+" : ""}${format(importance)}`;
    span.style.backgroundColor = shade(importance >= 0 ? "--positive" : "--negative",
                                       0.6 * Math.abs(importance) / largest);
    return span;
  });
  $("sentiment-words").replaceChildren(...words.flatMap((w) => [w, " "]));
}

// -- generation -------------------------------------------------------------------------------

let generationAbort = null;

function charSpan(entry) {
  const span = document.createElement("span");
  span.className = "char";
  span.textContent = entry.char;
  const p = Math.exp(entry.logprob);
  const alternatives = entry.top.map((t) => `${JSON.stringify(t.char)} ${format(Math.exp(t.logprob), 2)}`);
  span.title = `p = ${format(p)}; likeliest: ${alternatives.join(", ")}`;
  span.style.backgroundColor = `rgba(31, 95, 168, ${(0.08 + 0.5 * p).toFixed(3)})`;
  return span;
}

async function generate() {
  showError("generation", null);
  generationAbort?.abort();
  const abort = new AbortController();
  generationAbort = abort;
  const output = $("generation-output");
  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = $("generation-prompt").value;
  output.replaceChildren(prompt);
  const body = { prompt: $("generation-prompt").value, temperature: number("generation-temperature"),
                 top_k: number("generation-top-k"), seed: number("generation-seed"),
                 max_tokens: number("generation-max-tokens"), logprobs: 3 };
  $("generation-start").disabled = true;
  $("generation-stop").disabled = false;
  let count = 0;
  $("generation-status").textContent = "generating\u2026";
  try {
    const response = await fetch("/generate_stream", { method: "POST", headers: headers(),
                                                        body: JSON.stringify(body), signal: abort.signal });
    if (!response.ok) throw new ApiError(await errorMessage(response));
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === "end") break;
      if (event === "error") {
        const parsed = (() => { try { return JSON.parse(data); } catch { return { error: data }; } })();
        throw new ApiError(parsed.error || parsed.message || data);
      }
      const chunk = chunkOf(data);
      const entries = chunk.logprobs && chunk.logprobs.length ? chunk.logprobs
        : [...chunk.text].map((char) => ({ char, logprob: 0, top: [] }));
      output.append(...entries.map(charSpan));
      count += entries.length;
      output.scrollTop = output.scrollHeight;
      $("generation-status").textContent = `${count} characters\u2026`;
    }
    $("generation-status").textContent = `${count} characters generated`;
  } catch (error) {
    if (error.name === "AbortError") {
      $("generation-status").textContent = `stopped after ${count} characters`;
    } else {
      $("generation-status").textContent = "";
      showError("generation", error);
    }
  } finally {
    if (generationAbort === abort) generationAbort = null;
    $("generation-start").disabled = false;
    $("generation-stop").disabled = true;
  }
}

async function scorePrompt() {
  showError("generation", null);
  const text = $("generation-prompt").value;
  try {
    const result = await post("/score", { text });
    const largest = Math.max(1, ...result.surprisal.filter((s) => s !== null));
    const spans = [...text].map((char, i) => {
      const span = document.createElement("span");
      span.className = "char";
      span.textContent = char;
      const s = result.surprisal[i];
      span.title = s === null ? "not in the model's vocabulary" : `surprisal ${format(s, 2)} nats`;
      span.style.backgroundColor = s === null ? "rgba(120, 120, 120, 0.4)"
        : shade("--negative", 0.05 + 0.6 * s / largest);
      return span;
    });
    $("generation-surprisal").replaceChildren(...spans);
    $("generation-surprisal").hidden = false;
    const caption = $("generation-surprisal-caption");
    caption.textContent = `The prompt, each character shaded by its surprisal (darker: less expected); ` +
      `mean ${result.nats_per_char === null ? "n/a" : format(result.nats_per_char, 2)} nats per character.`;
    caption.hidden = false;
  } catch (error) {
    showError("generation", error);
  }
}

// -- translation ------------------------------------------------------------------------------

async function translate() {
  showError("translation", null);
  try {
    const [result] = await post("/translate", { texts: [$("translation-text").value],
                                                source: $("translation-source").value,
                                                beam_size: number("translation-beam"),
                                                return_attention: true });
    $("translation-output").textContent = result.translation || "(empty translation)";
    const chart = $("translation-chart");
    if (!result.target_tokens.length) {
      chart.replaceChildren();
      return;
    }
    chart.replaceChildren(heatmap(result.target_tokens, result.source_tokens, result.attention, {
      description: `attention of ${result.target_tokens.length} English pieces over ` +
                   `${result.source_tokens.length} source pieces`,
      cellTitle: (row, column) => `${result.target_tokens[row]} \u2190 ${result.source_tokens[column]}: ` +
                                  format(result.attention[row][column]),
    }));
  } catch (error) {
    showError("translation", error);
  }
}

// -- models -----------------------------------------------------------------------------------

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// The test-split figures where the model's metrics have them, else what its metrics say
function metricsSummary(metrics) {
  const test = metrics && typeof metrics.test === "object" ? metrics.test : null;
  return Object.entries(test || metrics || {})
    .filter(([, value]) => typeof value === "number" || typeof value === "string")
    .slice(0, 3)
    .map(([key, value]) => `${test ? "test " : ""}${key.replace(/_/g, " ")}: ` +
                           `${typeof value === "number" ? +value.toFixed(4) : value}`)
    .join("; ");
}

async function loadModels() {
  showError("models", null);
  try {
    const response = await fetch("/models", { headers: headers() });
    if (!response.ok) throw new ApiError(await errorMessage(response));
    const models = await response.json();
    const rows = models.map((model) => {
      const tr = document.createElement("tr");
      const capabilities = Object.entries(model.capabilities || {})
        .map(([path, options]) => (options.length ? `${path} (${options.join(", ")})` : path)).join("; ");
      tr.append(cell(model.tag), cell(model.task), cell(model.cell),
                cell(model.parameters.toLocaleString("en")), cell(model.precision || ""),
                cell(capabilities), cell(metricsSummary(model.metrics)));
      tr.children[3].className = "number";
      return tr;
    });
    $("models-table").tBodies[0].replaceChildren(...rows);
  } catch (error) {
    showError("models", error);
  }
}

// -- wiring -----------------------------------------------------------------------------------

function onSubmit(formId, action) {
  $(formId).addEventListener("submit", (event) => {
    event.preventDefault();
    action();
  });
}

function start() {
  const token = $("auth-token");
  token.value = sessionStorage.getItem("rnnserve-token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("rnnserve-token", token.value));
  onSubmit("token-form", () => sessionStorage.setItem("rnnserve-token", token.value));
  onSubmit("sentiment-form", explainSentiment);
  onSubmit("generation-form", generate);
  onSubmit("translation-form", translate);
  $("generation-stop").addEventListener("click", () => generationAbort?.abort());
  $("generation-score").addEventListener("click", scorePrompt);
  // Ctrl+Enter in a text area sends its form
  for (const area of document.querySelectorAll("textarea")) {
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        area.form.requestSubmit();
      }
    });
  }
  // the first look already shows something: every example rendered
  document.body.dataset.ready = "loading";
  Promise.allSettled([explainSentiment(), generate(), translate(), loadModels()])
    .then(() => { document.body.dataset.ready = "yes"; });
}

start();
