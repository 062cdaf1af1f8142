// Charts with uPlot (vendored, MIT): one chart per metric, several runs overlaid on shared x values.
import { h, ticks } from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

// The display title of a metric key (TRL's names kept, made readable).
const TITLES = {
  loss: "Loss", "eval/loss": "Held-out loss", "rewards/accuracies": "Reward accuracy",
  "rewards/margins": "Reward margin", "rewards/chosen": "Reward (chosen)", "rewards/rejected": "Reward (rejected)",
  entropy: "Policy entropy (nats/token)", ref_entropy: "Reference entropy (nats/token)", alpha: "Alpha",
  learning_rate: "Learning rate", grad_norm: "Grad norm (before clipping)", tokens_per_s: "Tokens/s",
  peak_memory_mb: "Peak memory (MB)", step_time_s: "Step time (s)",
};
export const title = (k) => TITLES[k] || k;

// Metrics drawn together on one chart (policy beside reference, train beside held-out).
export const GROUPS = [
  ["loss", "eval/loss"], ["rewards/accuracies", "eval/rewards/accuracies"], ["rewards/margins"],
  ["entropy", "ref_entropy", "entropy_target", "eval/entropy"], ["alpha"], ["rewards/chosen", "rewards/rejected"],
  ["learning_rate"], ["grad_norm"], ["tokens_per_s"], ["peak_memory_mb"],
];

function sortedXY(x, y) {
  const idx = x.map((_, i) => i).sort((a, b) => x[a] - x[b]);
  return [idx.map((i) => x[i]), idx.map((i) => y[i])];
}

// lines: [{label, x: [], y: [], color?, width?, dash?}] -> a uPlot chart in a card.
export function chart(parent, name, lines, { xLabel = "step", points = false, height = 220 } = {}) {
  const card = h("div", { class: "chart-card" }, h("h4", { text: name }));
  const box = h("div", { class: "chart" });
  card.append(box);
  parent.append(card);
  const state = { lines, u: null };
  const draw = () => {
    const tables = state.lines.map((l) => sortedXY(l.x, l.y));
    const data = tables.length ? window.uPlot.join(tables) : [[]];
    const series = [{ label: xLabel }].concat(state.lines.map((l, i) => ({
      label: l.label, stroke: l.color || PALETTE[i % PALETTE.length], width: l.width || 1.5, spanGaps: true,
      dash: l.dash, points: { show: points || l.x.length < 3, size: points ? 7 : 5 },
    })));
    const width = Math.max(260, box.clientWidth || 420);
    if (state.u) state.u.destroy();
    state.u = new window.uPlot({
      width, height, series, legend: { live: true },
      scales: { x: { time: false } }, cursor: { drag: { x: true, y: false } },
      axes: [{ label: xLabel, size: 40, labelSize: 18, values: (u, splits) => ticks(splits, xLabel === "step" || xLabel === "k") },
        { size: (u, values) => 18 + 7 * Math.max(3, ...(values || []).map((v) => String(v).length)),
          values: (u, splits) => ticks(splits) }],
    }, data, box);
  };
  draw();
  return {
    card,
    update(newLines) { state.lines = newLines; draw(); },
    points() { return state.lines.reduce((n, l) => n + l.x.length, 0); },
  };
}

// Append the rows of a live "after=step" response to a chart's curves (kept per metric key).
export function mergeCurves(into, fresh) {
  for (const [key, c] of Object.entries(fresh || {})) {
    if (!into[key]) into[key] = { x: [], y: [] };
    into[key].x.push(...c.x);
    into[key].y.push(...c.y);
  }
  return into;
}
