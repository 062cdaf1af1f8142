// A run's eval/results.json: accuracy per temperature (policy beside reference), pass@k curves, diversity,
// entropy. Result kinds this page does not know yet are shown as a table of their fields, so new ones appear.
import { chart } from "./charts.js";
import { h, num } from "./dom.js";

const KNOWN = new Set(["sampling", "headline", "preference", "settings", "target", "kind", "files", "alpha", "name", "num_tasks"]);

export function flatRows(value, prefix = "", out = []) {
  if (out.length >= 300) return out;
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatRows(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (Array.isArray(value) && value.length && value.every((v) => typeof v === "number")) {
    out.push([prefix, value.map((v) => num(v)).join(", ")]);
  } else if (Array.isArray(value)) {
    value.slice(0, 50).forEach((v, i) => flatRows(v, `${prefix}[${i}]`, out));
  } else {
    out.push([prefix, typeof value === "number" ? num(value, 4) : String(value)]);
  }
  return out;
}

export function kvTable(obj, cls = "kv") {
  return h("table", { class: cls }, h("tbody", {}, flatRows(obj).map(([k, v]) =>
    h("tr", {}, h("th", { text: k }), h("td", { class: "mono", text: v })))));
}

const temps = (side) => Object.values(side || {}).filter((e) => e && typeof e.temperature === "number")
  .sort((a, b) => a.temperature - b.temperature);

export function evalSection(parent, results) {
  if (!results || typeof results !== "object") {
    parent.append(h("p", { class: "muted", text: "No evaluation yet (eval/results.json appears when the eval stage has run)." }));
    return;
  }
  const grid = h("div", { class: "chart-grid" });
  parent.append(grid);
  const sampling = results.sampling || {};
  const pol = temps(sampling.policy), ref = temps(sampling.reference);
  if (pol.length) {
    const lines = [{ label: "policy", x: pol.map((e) => e.temperature), y: pol.map((e) => e.accuracy) }];
    if (ref.length) lines.push({ label: "reference", x: ref.map((e) => e.temperature), y: ref.map((e) => e.accuracy), dash: [6, 4] });
    chart(grid, "Accuracy vs temperature", lines, { xLabel: "temperature", points: true });
    const pk = pol.map((e) => ({ label: `policy T=${e.temperature}`, x: (e.pass_at_k || []).map((_, i) => i + 1), y: e.pass_at_k || [] }));
    ref.forEach((e) => pk.push({ label: `reference T=${e.temperature}`, x: (e.pass_at_k || []).map((_, i) => i + 1), y: e.pass_at_k || [], dash: [6, 4] }));
    chart(grid, "pass@k", pk, { xLabel: "k", points: true });
    const div = [];
    for (const [side, list] of [["policy", pol], ["reference", ref]]) {
      for (const e of list) if (e.diversity) div.push({ side, temperature: e.temperature, ...e.diversity });
    }
    if (div.length) {
      const keys = Object.keys(div[0]).filter((k) => !["side", "temperature"].includes(k));
      parent.append(h("h4", { text: "Diversity of samples" }), h("table", { class: "grid-table" },
        h("thead", {}, h("tr", {}, ["model", "T", ...keys].map((k) => h("th", { text: k })))),
        h("tbody", {}, div.map((d) => h("tr", {}, h("td", { text: d.side }), h("td", { text: num(d.temperature, 2) }),
          keys.map((k) => h("td", { class: "num", text: num(d[k], 3) })))))));
    }
  }
  const head = results.headline || {};
  const ents = Object.entries(head).filter(([, v]) => v && typeof v === "object" && ("policy" in v || "reference" in v));
  if (ents.length) {
    parent.append(h("h4", { text: "Headline (policy vs reference)" }), h("table", { class: "grid-table", id: "headline" },
      h("thead", {}, h("tr", {}, ["metric", "policy", "reference"].map((k) => h("th", { text: k })))),
      h("tbody", {}, ents.map(([k, v]) => h("tr", {}, h("td", { text: k }), h("td", { class: "num", text: num(v.policy, 4) }),
        h("td", { class: "num", text: num(v.reference, 4) }))))));
  }
  const scalars = Object.entries(head).filter(([, v]) => typeof v === "number");
  if (scalars.length) parent.append(kvTable(Object.fromEntries(scalars)));
  if (results.preference) parent.append(h("h4", { text: "Held-out preference metrics" }), kvTable(results.preference));
  const rest = Object.entries(results).filter(([k]) => !KNOWN.has(k));
  for (const [k, v] of rest.filter(([, x]) => x && typeof x === "object")) {
    parent.append(h("h4", { class: "result-kind", text: `Results: ${k}` }), kvTable(v));
  }
  const plain = rest.filter(([, x]) => !x || typeof x !== "object");
  if (plain.length) parent.append(h("h4", { text: "Evaluation settings" }), kvTable(Object.fromEntries(plain)));
}
