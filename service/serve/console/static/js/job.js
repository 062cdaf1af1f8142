// A job: live curves of every metric in metrics.jsonl, eval results, export reports, checkpoints, artifacts,
// events, and cancel (after a confirmation).
import { api } from "./api.js";
import { chart, GROUPS, mergeCurves, title } from "./charts.js";
import { alphaText, badge, clear, duration, errorBox, h, num, progressBar, when } from "./dom.js";
import { evalSection, kvTable } from "./evalview.js";

const REPORT_TITLES = { onnx: "ONNX parity", quantization: "Quantization deltas", gguf: "GGUF check" };
const LIVE = new Set(["running", "queued", "validating_files"]);

function groupsOf(curves) {
  const keys = Object.keys(curves), used = new Set(), out = [];
  for (const g of GROUPS) {
    const have = g.filter((k) => keys.includes(k));
    if (have.length) { out.push(have); have.forEach((k) => used.add(k)); }
  }
  keys.filter((k) => !used.has(k) && !["epoch", "tokens", "skipped"].includes(k)).sort().forEach((k) => out.push([k]));
  return out;
}

function confirmCancel(job, onYes) {
  const dlg = h("dialog", { class: "confirm", id: "cancel-dialog" },
    h("h3", { text: "Cancel this job?" }),
    h("p", { text: `${job.name} stops at the next step boundary after a checkpoint. This cannot be undone.` }));
  const yes = h("button", { class: "btn danger", id: "cancel-confirm", text: "Cancel job" });
  const no = h("button", { class: "btn", id: "cancel-keep", text: "Keep running" });
  dlg.append(h("div", { class: "actions" }, no, yes));
  no.addEventListener("click", () => { dlg.close(); dlg.remove(); });
  yes.addEventListener("click", async () => { dlg.close(); dlg.remove(); await onYes(); });
  document.body.append(dlg);
  dlg.showModal();
}

function header(job, session, refresh) {
  const facts = [["Model", job.model], ["Alpha (α)", alphaText(job)], ["Beta (β)", num(job.beta, 2)],
    ["Method", job.lora ? "LoRA" : "full"], ["Stage", job.stage || "–"], ["Tokens/s", job.tokens_per_s ? num(Math.round(job.tokens_per_s)) : "–"],
    ["Fine-tuned model", job.fine_tuned_model || "–"], ["Created", when(job.created_at)]];
  if (job.quantization) facts.splice(4, 0, ["Quantized base", JSON.stringify(job.quantization)]);
  if (job.suffix) facts.push(["Suffix", job.suffix]);
  for (const [k, v] of Object.entries(job.metadata || {})) facts.push([`metadata.${k}`, v]);
  const actions = h("div", { class: "actions" });
  if (!session.read_only && LIVE.has(job.status) && !job.cancel_requested) {
    const btn = h("button", { class: "btn danger", id: "cancel-job", text: "Cancel job" });
    btn.addEventListener("click", () => confirmCancel(job, async () => {
      try { await api.post(`/jobs/${encodeURIComponent(job.id)}/cancel`); refresh(); } catch (e) { actions.append(errorBox(e)); }
    }));
    actions.append(btn);
  }
  return h("div", {},
    h("div", { class: "page-head" }, h("div", {}, h("a", { href: "/", class: "muted small", text: "← all jobs" }),
      h("h1", { id: "job-name" }, h("span", { text: job.name }), " ", badge(job.status))), actions),
    h("div", { class: "card facts" }, progressBar(job),
      h("dl", {}, facts.map(([k, v]) => h("div", { class: "fact" }, h("dt", { text: k }), h("dd", { class: "mono", text: v ?? "–" })))),
      job.error ? h("div", { class: "error", text: job.error }) : null));
}

export function jobPage(main, session, jobId) {
  const curves = {};
  let lastStep = null, charts = {}, stopped = false;
  const top = h("div"), curveGrid = h("div", { class: "chart-grid", id: "curves" }), info = h("div");
  const curveNote = h("span", { class: "muted small", id: "curve-note" });
  main.append(top, h("section", {}, h("h2", {}, "Training curves ", curveNote), curveGrid), info);
  const drawCurves = () => {
    for (const g of groupsOf(curves)) {
      const name = g.map(title).join(" · ");
      const lines = g.map((k) => ({ label: k, x: curves[k].x, y: curves[k].y, dash: k.startsWith("ref_") || k.startsWith("eval/") ? [6, 4] : undefined }));
      if (charts[name]) charts[name].update(lines); else charts[name] = chart(curveGrid, name, lines);
    }
    const n = curves.loss ? curves.loss.x.length : 0;
    curveNote.textContent = n ? `${n} points drawn · last step ${lastStep}` : "no metrics yet";
  };
  const loadMetrics = async () => {
    const q = lastStep === null ? "" : `?after=${lastStep}`;
    const m = await api.get(`/jobs/${encodeURIComponent(jobId)}/metrics${q}`);
    if (m.rows || lastStep === null) { mergeCurves(curves, m.curves); lastStep = m.last_step ?? lastStep; drawCurves(); }
  };
  const renderInfo = async (job) => {
    const events = (await api.get(`/jobs/${encodeURIComponent(jobId)}/events`)).data;
    const evalBox = h("section", { id: "eval" }, h("h2", { text: "Evaluation" }));
    const reports = h("section", { id: "reports" }, h("h2", { text: "Export reports" }));
    const rs = Object.entries(job.reports || {});
    if (!rs.length) reports.append(h("p", { class: "muted", text: "No export reports (ONNX / quantization / GGUF) yet." }));
    for (const [k, v] of rs) reports.append(h("div", { class: "card" }, h("h4", { text: REPORT_TITLES[k] || k }), kvTable(v)));
    const ckpts = h("section", { id: "checkpoints" }, h("h2", { text: "Checkpoints" }),
      job.checkpoints.length ? h("table", { class: "grid-table" }, h("tbody", {}, job.checkpoints.map((c) =>
        h("tr", {}, h("td", { text: `step ${c.step}` }), h("td", { class: "muted", text: when(c.created_at) })))))
        : h("p", { class: "muted", text: "No checkpoints yet." }));
    const files = h("section", { id: "artifacts" }, h("h2", { text: "Artifacts" }), job.parts.length && !LIVE.has(job.status)
      ? h("div", { class: "actions left" }, job.parts.map((p) => h("a", { class: "btn", download: "", href: `/console/api/jobs/${encodeURIComponent(jobId)}/artifacts?part=${encodeURIComponent(p)}`, text: `${p}.tar` })))
      : h("p", { class: "muted", text: LIVE.has(job.status) ? "Downloads appear when the job has finished." : "No artifacts." }));
    const ev = h("section", { id: "events" }, h("h2", { text: "Events" }), h("ol", { class: "events" }, events.map((e) =>
      h("li", { class: `lvl-${String(e.level).replace(/[^a-z]/g, "")}` }, h("span", { class: "muted small", text: e.created_at ? when(e.created_at) : "" }), " ", h("span", { class: "msg", text: e.message })))));
    clear(info).append(h("div", { class: "two-col" }, h("div", {}, evalBox, reports), h("div", {}, ckpts, files, ev)));
    evalSection(evalBox, job.eval);  // once in the page, so the charts take the column's width
  };
  const refresh = async () => {
    try {
      const job = await api.get(`/jobs/${encodeURIComponent(jobId)}`);
      clear(top).append(header(job, session, refresh));
      await loadMetrics();
      await renderInfo(job);
      if (!LIVE.has(job.status) && job.state !== "running") stopped = true;
    } catch (e) {
      stopped = true;
      clear(main).append(e.status === 404 ? h("div", { class: "notfound", id: "not-found" }, h("h1", { text: "404" }),
        h("p", { text: "No such job (or it belongs to another key)." }), h("a", { href: "/", text: "All jobs" })) : errorBox(e));
    }
  };
  refresh();
  const timer = setInterval(() => { if (!stopped) refresh(); }, 1500);
  return () => clearInterval(timer);
}
export { duration };
