// New job: upload a file (row errors as the API reports them), pick a model, the H-DPO fields, a preview of
// the spec that will be sent, submit; errors are shown at the field they name, with the spec's own message.
import { api } from "./api.js";
import { clear, h } from "./dom.js";

// spec field path (as the API's messages name it) -> form field id
const FIELDS = [["data.train", "train"], ["training_file", "train"], ["file", "train"], ["model", "model"],
  ["hdpo.beta", "beta"], ["hdpo.target_entropy", "target"], ["hdpo.alpha", "alpha"], ["train.max_steps", "steps"],
  ["train", "steps"], ["eval", "tasks"], ["suffix", "suffix"], ["lora", "method"], ["metadata", "suffix"]];

function field(id, labelText, input, help) {
  return h("div", { class: "field", id: `field-${id}` }, h("label", { for: id, text: labelText }), input,
    help ? h("div", { class: "help", text: help }) : null, h("div", { class: "field-error", id: `error-${id}`, role: "alert" }));
}

export function newJobPage(main, session, go) {
  const fileSel = h("select", { id: "train" }, h("option", { value: "", text: "— choose an uploaded file —" }));
  const upload = h("input", { type: "file", id: "upload", accept: ".jsonl" });
  const model = h("select", { id: "model" });
  const beta = h("input", { id: "beta", type: "number", step: "any", value: "0.1" });
  const alphaMode = h("select", { id: "alpha-mode" }, h("option", { value: "fixed", text: "fixed" }), h("option", { value: "auto", text: "auto (reach a target entropy)" }));
  const alpha = h("input", { id: "alpha", type: "number", step: "any", value: "0.9" });
  const target = h("input", { id: "target", type: "text", value: "0.5", disabled: true });
  const steps = h("input", { id: "steps", type: "number", min: "1", value: "100" });
  const method = h("select", { id: "method" }, h("option", { value: "lora", text: "LoRA (adapter, merged at the end)" }), h("option", { value: "full", text: "Full fine-tuning" }));
  const tasks = h("select", { id: "tasks" }, h("option", { value: "", text: "— no eval tasks —" }));
  const suffix = h("input", { id: "suffix", type: "text", placeholder: "my-run (optional)" });
  const preview = h("pre", { class: "preview", id: "spec-preview" });
  const submit = h("button", { class: "btn primary", id: "submit-job", type: "submit", text: "Start job" });
  const general = h("div", { id: "form-error" });
  const form = h("form", { class: "card form", id: "new-job-form", novalidate: true },
    h("h3", { text: "Data" }),
    field("train", "Training file (preference pairs, JSONL)", h("div", { class: "row" }, fileSel, upload),
      "TRL {prompt, chosen, rejected} or OpenAI DPO rows; a bad row is reported as file:line."),
    h("h3", { text: "Model and method" }),
    field("model", "Base model", model, "From the server's model roots, or a fine_tuned_model of yours."),
    field("method", "Method", method),
    h("div", { class: "row" }, field("beta", "β (KL strength)", beta), field("alpha-mode", "α", alphaMode),
      field("alpha", "α value", alpha, "< 1 sharpens, > 1 flattens"), field("target", "Target entropy", target, "nats/token, or e.g. 0.8x of the reference")),
    field("steps", "Steps", steps),
    field("tasks", "Eval tasks (optional)", tasks, "A JSONL of tasks uploaded with purpose user_data."),
    field("suffix", "Suffix", suffix, "Letters, digits, - and _; part of the fine_tuned_model name."),
    general, h("div", { class: "actions left" }, submit));
  main.append(h("div", { class: "page-head" }, h("h1", { text: "New fine-tuning job" })),
    h("div", { class: "two-col" }, form, h("div", {}, h("h3", { text: "Spec preview" }), preview,
      h("p", { class: "muted small", text: "Sent to the server as the job spec (POST /v1/hdpo/jobs takes the same)." }))));

  const spec = () => {
    const s = { model: { name_or_path: model.value }, data: { train: fileSel.value },
      hdpo: { beta: Number(beta.value) }, train: { max_steps: Number(steps.value) }, merge: {} };
    if (alphaMode.value === "auto") { s.hdpo.alpha = "auto"; s.hdpo.target_entropy = Number.isFinite(Number(target.value)) && target.value.trim() !== "" ? Number(target.value) : target.value; }
    else s.hdpo.alpha = Number(alpha.value);
    if (method.value === "lora") s.lora = {};
    if (tasks.value) s.eval = { tasks: tasks.value };
    return s;
  };
  const show = () => { preview.textContent = JSON.stringify({ spec: spec(), suffix: suffix.value || null }, null, 2); };
  const clearErrors = () => { form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; }); form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid")); clear(general); };
  const showError = (err) => {
    const text = err.message || String(err);
    const where = [err.param || "", ...text.split(/[\n;]/)];
    for (const [path, id] of FIELDS) {
      const hit = where.find((w) => w.trim().startsWith(path) || w.includes(`${path}:`) || w === path);
      if (hit !== undefined) {
        const slot = form.querySelector(`#error-${id}`);
        slot.textContent = text;
        form.querySelector(`#field-${id}`).classList.add("invalid");
        return;
      }
    }
    general.append(h("div", { class: "error", role: "alert", text }));
  };
  alphaMode.addEventListener("change", () => { const auto = alphaMode.value === "auto"; alpha.disabled = auto; target.disabled = !auto; show(); });
  form.addEventListener("input", show);
  form.addEventListener("change", show);
  const loadFiles = async (pick) => {
    const files = (await api.get("/files")).data;
    for (const sel of [fileSel, tasks]) while (sel.options.length > 1) sel.remove(1);
    for (const f of files) {
      const opt = () => h("option", { value: f.id, text: `${f.filename} (${f.id}, ${f.bytes} bytes)` });
      if (f.purpose === "fine-tune") fileSel.append(opt());
      if (f.purpose === "user_data") tasks.append(opt());
    }
    if (pick) fileSel.value = pick;
    show();
  };
  upload.addEventListener("change", async () => {
    clearErrors();
    if (!upload.files.length) return;
    const fd = new FormData();
    fd.append("file", upload.files[0]);
    fd.append("purpose", "fine-tune");
    try { const f = await api.upload("/files", fd); await loadFiles(f.id); } catch (e) { showError({ ...e, message: e.message, param: "file" }); }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    if (!fileSel.value) { showError({ message: "data.train: choose or upload a training file", param: "data.train" }); return; }
    submit.disabled = true;
    try {
      const job = await api.post("/jobs", { spec: spec(), suffix: suffix.value || null });
      go(`/jobs/${encodeURIComponent(job.id)}`);
    } catch (e) { showError(e); } finally { submit.disabled = false; }
  });
  api.get("/models").then((m) => { for (const n of m.data) model.append(h("option", { value: n, text: n })); show(); }).catch((e) => showError(e));
  loadFiles().catch((e) => showError(e));
  show();
  return () => {};
}
