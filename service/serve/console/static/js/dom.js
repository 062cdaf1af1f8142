// DOM helpers. Every value from the server goes into the page as text (textContent / attributes), never as
// markup: a job suffix, file name, model name or event message can never become script.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

export function num(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${num(x, digits)}`).join(", ");
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(digits);
}

export function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function when(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

export function alphaText(job) {
  if (job.alpha === "auto") return `auto → ${job.target_entropy ?? "?"} nats`;
  return job.alpha === null || job.alpha === undefined ? "–" : num(job.alpha, 2);
}

export function badge(state) {
  const s = state || "unknown";
  return h("span", { class: `badge st-${s.replace(/[^a-z_]/g, "")}`, text: s });
}

export function progressBar(job) {
  const total = job.total_steps || job.max_steps;
  const step = job.step || 0;
  const pct = total ? Math.min(100, (100 * step) / total) : 0;
  const done = ["succeeded"].includes(job.status);
  const bar = h("div", { class: "bar" }, h("div", { class: "fill" }));
  bar.firstChild.style.width = `${done ? 100 : pct}%`;
  const label = total ? `${step}/${total}` : (step ? `${step}` : "–");
  const eta = job.eta_s ? ` · ${duration(job.eta_s)} left` : "";
  return h("div", { class: "progress" }, bar, h("span", { class: "muted small", text: label + eta }));
}

export function errorBox(err) {
  return h("div", { class: "error", role: "alert", text: err && err.message ? err.message : String(err) });
}

// Axis tick labels: as many decimals as the tick spacing needs, exponents for learning rates (1e-5) and
// huge counts, thousands separated.
export function ticks(splits, integer = false) {
  const inc = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 0;
  return splits.map((v) => {
    if (v === null || v === undefined) return "";
    if (integer) return Number.isInteger(v) ? v.toLocaleString("en-US") : "";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if ((a < 1e-2 || a >= 1e6)) {
      return v.toExponential(inc ? Math.min(6, Math.max(1, Math.ceil(Math.log10(a / inc)))) : 2);
    }
    let dec = 0;  // the decimals the tick spacing needs (0.25 -> 2, 0.5 -> 1, 5 -> 0)
    while (inc && dec < 8 && Math.abs(inc * 10 ** dec - Math.round(inc * 10 ** dec)) > 1e-6 * 10 ** dec) dec += 1;
    return a >= 1000 ? v.toLocaleString("en-US", { maximumFractionDigits: dec }) : v.toFixed(dec);
  });
}
