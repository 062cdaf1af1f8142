// The jobs list: state, model, alpha (or auto and its target), beta, progress with time left, tokens/s,
// fine_tuned_model. Filters apply at once; the list refreshes every few seconds without a reload.
import { api } from "./api.js";
import { alphaText, badge, clear, errorBox, h, num, progressBar, when } from "./dom.js";

const STATES = ["all", "running", "queued", "succeeded", "failed", "cancelled"];

// A quantized base (QLoRA): "4-bit" from {bits: 4} or a string setting, else "quantized".
const quantTag = (q) => (typeof q === "string" ? q : q && q.bits ? `${q.bits}-bit` : "quantized");

function row(job, selected, onPick) {
  const box = h("input", { type: "checkbox", "aria-label": `select ${job.name}`, checked: selected.has(job.id) });
  box.addEventListener("change", () => onPick(job.id, box.checked));
  const method = job.lora ? "LoRA" : "full";
  return h("tr", { "data-id": job.id },
    h("td", {}, box),
    h("td", {}, h("a", { href: `/jobs/${encodeURIComponent(job.id)}`, class: "job-link", text: job.name }),
      h("div", { class: "muted small", text: job.where ? job.where : job.id })),
    h("td", {}, badge(job.status)),
    h("td", { class: "mono small", text: job.model || "–" },
      job.quantization ? h("span", { class: "tag", title: JSON.stringify(job.quantization), text: quantTag(job.quantization) }) : null),
    h("td", { class: "num", text: alphaText(job) }),
    h("td", { class: "num", text: num(job.beta, 2) }),
    h("td", { class: "small", text: method }),
    h("td", {}, progressBar(job)),
    h("td", { class: "num", text: job.tokens_per_s ? num(Math.round(job.tokens_per_s)) : "–" }),
    h("td", { class: "mono small", text: job.fine_tuned_model || "–" }),
    h("td", { class: "small muted", text: when(job.created_at) }));
}

export function jobsPage(main, session, go) {
  const selected = new Set();
  const filter = { state: "all", text: "" };
  let last = [];
  const stateSel = h("select", { id: "filter-state", "aria-label": "state" },
    STATES.map((s) => h("option", { value: s, text: s })));
  const search = h("input", { id: "filter-text", type: "search", placeholder: "Filter by name, model, id…" });
  const compareBtn = h("button", { id: "compare-selected", class: "btn", disabled: true, text: "Compare selected" });
  const body = h("tbody");
  const status = h("div", { class: "muted small", id: "list-status" });
  const table = h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, ["", "Job", "State", "Model", "α", "β", "Method", "Progress", "Tokens/s",
      "Fine-tuned model", "Created"].map((t) => h("th", { text: t })))), body);
  const onPick = (id, on) => { if (on) selected.add(id); else selected.delete(id); compareBtn.disabled = selected.size < 1; };
  compareBtn.addEventListener("click", () => go(`/compare?ids=${[...selected].map(encodeURIComponent).join(",")}`));
  const render = () => {
    const t = filter.text.toLowerCase();
    const shown = last.filter((j) => (filter.state === "all" || j.status === filter.state) &&
      (!t || [j.name, j.model, j.id, j.fine_tuned_model, j.suffix].some((v) => v && String(v).toLowerCase().includes(t))));
    clear(body).append(...shown.map((j) => row(j, selected, onPick)));
    if (!shown.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "empty", text: last.length ? "No job matches the filters." : "No jobs yet." })));
    status.textContent = `${shown.length} of ${last.length} jobs · updated ${new Date().toLocaleTimeString("en-GB")}`;
  };
  stateSel.addEventListener("change", () => { filter.state = stateSel.value; render(); });
  search.addEventListener("input", () => { filter.text = search.value; render(); });
  const actions = [compareBtn];
  if (!session.read_only) actions.unshift(h("a", { class: "btn primary", href: "/new", id: "new-job", text: "New job" }));
  main.append(h("div", { class: "page-head" }, h("h1", { text: session.mode === "local" ? "Runs" : "Fine-tuning jobs" }),
    h("div", { class: "actions" }, actions)),
  h("div", { class: "filters" }, stateSel, search, status), h("div", { class: "card flush" }, table));
  const errors = h("div");
  main.append(errors);
  const load = async () => {
    try { last = (await api.get("/jobs")).data; clear(errors); render(); } catch (e) { clear(errors).append(errorBox(e)); }
  };
  load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
