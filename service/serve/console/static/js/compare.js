// Compare runs (picked jobs or a sweep): overlaid training curves and the paper's views per alpha (accuracy vs
// temperature, pass@k vs k, entropy vs alpha), with the best run under the sweep's selection metric marked.
import { api } from "./api.js";
import { chart, PALETTE } from "./charts.js";
import { alphaText, clear, errorBox, h, num } from "./dom.js";

const CURVES = [["loss", "Loss"], ["entropy", "Policy entropy"], ["rewards/accuracies", "Reward accuracy"], ["alpha", "Alpha"], ["rewards/margins", "Reward margin"]];

const label = (r, best) => `α=${r.alpha === "auto" ? `auto→${r.target_entropy}` : num(r.alpha_value ?? r.alpha, 2)} ${r.name}${r.id === best ? " ★ best" : ""}`;
const temps = (side) => Object.values(side || {}).filter((e) => e && typeof e.temperature === "number").sort((a, b) => a.temperature - b.temperature);

async function draw(out, ids, select) {
  clear(out);
  const cmp = await api.get(`/compare?ids=${ids.map(encodeURIComponent).join(",")}${select ? `&select=${encodeURIComponent(select)}` : ""}`);
  const runs = cmp.runs.slice().sort((a, b) => (a.alpha_value ?? 0) - (b.alpha_value ?? 0));
  const color = (r) => PALETTE[runs.indexOf(r) % PALETTE.length];
  const width = (r) => (r.id === cmp.best ? 3 : 1.5);
  out.append(h("table", { class: "grid-table", id: "compare-table" },
    h("thead", {}, h("tr", {}, ["", "run", "α", "state", `score (${cmp.select || "no metric"})`].map((t) => h("th", { text: t })))),
    h("tbody", {}, runs.map((r) => h("tr", { class: r.id === cmp.best ? "best" : "" },
      h("td", {}, h("span", { class: "swatch" })), h("td", {}, h("a", { href: `/jobs/${encodeURIComponent(r.id)}`, text: r.name })),
      h("td", { class: "num", text: alphaText(r) }), h("td", { text: r.state || "–" }),
      h("td", { class: "num", text: r.score === null ? "–" : num(r.score, 4) + (r.id === cmp.best ? "  ★ best" : "") }))))));
  out.querySelectorAll(".swatch").forEach((s, i) => { s.style.background = color(runs[i]); });
  const grid = h("div", { class: "chart-grid" });
  out.append(h("h2", { text: "Training curves" }), grid);
  const metrics = await Promise.all(runs.map((r) => api.get(`/jobs/${encodeURIComponent(r.id)}/metrics?points=600`)));
  for (const [key, name] of CURVES) {
    const lines = runs.map((r, i) => metrics[i].curves[key] && { label: label(r, cmp.best), ...metrics[i].curves[key], color: color(r), width: width(r) }).filter(Boolean);
    if (lines.length) chart(grid, name, lines);
  }
  const withEval = runs.filter((r) => r.eval && r.eval.sampling);
  const paper = h("div", { class: "chart-grid", id: "paper-views" });
  out.append(h("h2", { text: "Per alpha" }), paper);
  if (!withEval.length) { paper.append(h("p", { class: "muted", text: "None of these runs has eval results with sampling yet." })); return; }
  chart(paper, "Accuracy vs temperature", withEval.map((r) => {
    const t = temps(r.eval.sampling.policy);
    return { label: label(r, cmp.best), x: t.map((e) => e.temperature), y: t.map((e) => e.accuracy), color: color(r), width: width(r) };
  }), { xLabel: "temperature", points: true });
  const passT = (r) => { const t = temps(r.eval.sampling.policy); return t.find((e) => e.temperature === 1) || t[t.length - 1]; };
  chart(paper, "pass@k vs k (T=1.0 or highest)", withEval.map((r) => {
    const e = passT(r) || { pass_at_k: [] };
    return { label: label(r, cmp.best), x: e.pass_at_k.map((_, i) => i + 1), y: e.pass_at_k, color: color(r), width: width(r) };
  }), { xLabel: "k", points: true });
  // held-out chosen completions when the eval had preference pairs, else the model's own samples
  const entKey = withEval.some((r) => r.eval.headline && r.eval.headline.entropy_chosen) ? "entropy_chosen" : "entropy_sampled";
  const ent = withEval.filter((r) => r.alpha_value !== null && r.eval.headline && r.eval.headline[entKey]);
  if (ent.length) {
    const e = (r) => r.eval.headline[entKey];
    const lines = [{ label: `policy (${entKey === "entropy_chosen" ? "held-out chosen" : "samples"})`, x: ent.map((r) => r.alpha_value), y: ent.map((r) => e(r).policy) }];
    if (ent.some((r) => e(r).reference != null)) {
      lines.push({ label: "reference", x: ent.map((r) => r.alpha_value), y: ent.map((r) => e(r).reference), dash: [6, 4] });
    }
    chart(paper, "Entropy vs alpha", lines, { xLabel: "alpha", points: true });
  }
}

export function comparePage(main, session, go) {
  const params = new URLSearchParams(location.search);
  let ids = (params.get("ids") || "").split(",").filter(Boolean);
  const selectIn = h("input", { id: "select-metric", value: params.get("select") || "", placeholder: "accuracy@t1.0", size: 16 });
  const picker = h("div", { class: "picker" }), out = h("div", { id: "compare-out" });
  const sweepSel = h("select", { id: "sweep-pick", "aria-label": "sweep" }, h("option", { value: "", text: "— pick a sweep —" }));
  main.append(h("div", { class: "page-head" }, h("h1", { text: "Compare" })),
    h("div", { class: "card" }, h("div", { class: "filters" }, h("label", {}, "Sweep ", sweepSel),
      h("label", {}, "Selection metric ", selectIn)), picker), out);
  const run = async () => {
    history.replaceState(null, "", `/compare?ids=${ids.join(",")}${selectIn.value ? `&select=${encodeURIComponent(selectIn.value)}` : ""}`);
    if (!ids.length) { clear(out).append(h("p", { class: "muted", text: "Pick jobs or a sweep to compare." })); return; }
    try { await draw(out, ids, selectIn.value.trim()); } catch (e) { clear(out).append(errorBox(e)); }
  };
  selectIn.addEventListener("change", run);
  Promise.all([api.get("/jobs"), api.get("/sweeps")]).then(([jobs, sweeps]) => {
    for (const s of sweeps.data) sweepSel.append(h("option", { value: s.id, text: `${s.name} (${s.jobs.length} runs)` }));
    sweepSel.addEventListener("change", () => {
      const s = sweeps.data.find((x) => x.id === sweepSel.value);
      if (!s) return;
      ids = s.jobs.slice(); if (s.select) selectIn.value = s.select; syncBoxes(); run();
    });
    const boxes = jobs.data.map((j) => {
      const b = h("input", { type: "checkbox", value: j.id, checked: ids.includes(j.id) });
      b.addEventListener("change", () => { ids = boxes.filter((x) => x.checked).map((x) => x.value); run(); });
      picker.append(h("label", { class: "pick" }, b, " ", h("span", { text: `${j.name} · α ${alphaText(j)} · ${j.status}` })));
      return b;
    });
    const syncBoxes = () => boxes.forEach((b) => { b.checked = ids.includes(b.value); });
    run();
  }).catch((e) => clear(out).append(errorBox(e)));
  return () => {};
}
