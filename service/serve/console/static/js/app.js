// The console's router: one static page, views picked by the path (/, /jobs/ID, /compare, /new), history API.
import { api } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { comparePage } from "./compare.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";

const main = document.getElementById("main");
let stop = () => {};

function go(path) { history.pushState(null, "", path); route(); }

function signIn(session) {
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "hdpo-sk-…", required: true });
  const err = h("div", { class: "field-error", id: "signin-error", role: "alert" });
  const form = h("form", { class: "card signin", id: "signin-form" }, h("h1", { text: "Sign in" }),
    h("p", { class: "muted", text: "Use an API key of this server (hdpo-tune serve keys create NAME). The key is exchanged for a session cookie and is not stored in the browser." }),
    h("label", { for: "api-key", text: "API key" }), key, err, h("button", { class: "btn primary", type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { await api.post("/session", { key: key.value }); key.value = ""; await start(); }
    catch (e) { err.textContent = e.message; }
  });
  clear(main).append(form);
}

function nav(session) {
  const n = document.getElementById("nav"), who = document.getElementById("who");
  const links = [["/", session.mode === "local" ? "Runs" : "Jobs"], ["/compare", "Compare"]];
  if (!session.read_only) links.push(["/new", "New job"]);
  clear(n).append(...links.map(([href, text]) => {
    const a = h("a", { href, text });
    if ((href === "/" ? location.pathname === "/" || location.pathname.startsWith("/jobs") : location.pathname.startsWith(href))) a.className = "on";
    return a;
  }));
  clear(who);
  if (session.mode === "local") who.append(h("span", { class: "tag", text: "read-only · local runs" }));
  else if (session.signed_in) {
    const out = h("button", { class: "btn small", id: "sign-out", text: "Sign out" });
    out.addEventListener("click", async () => { await api.del("/session"); await start(); });
    who.append(h("span", { class: "muted small", text: `signed in as ${session.name}` }), out);
  }
}

let session = null;
function route() {
  stop();
  stop = () => {};
  if (!session.signed_in) { nav(session); signIn(session); return; }
  nav(session);
  clear(main);
  const p = location.pathname;
  if (p === "/" || p === "/signin") stop = jobsPage(main, session, go);
  else if (p.startsWith("/jobs/")) stop = jobPage(main, session, decodeURIComponent(p.slice(6)));
  else if (p === "/compare") stop = comparePage(main, session, go);
  else if (p === "/new" && !session.read_only) stop = newJobPage(main, session, go);
  else main.append(h("div", { class: "notfound" }, h("h1", { text: "404" }), h("p", { text: "No such page." })));
}

async function start() {
  try { session = await api.get("/session"); } catch (e) { clear(main).append(errorBox(e)); return; }
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[href^='/']");
  if (a && !a.hasAttribute("download") && !a.getAttribute("href").startsWith("/console/") && ev.button === 0 && !ev.metaKey && !ev.ctrlKey) {
    ev.preventDefault();
    go(a.getAttribute("href"));
  }
});
window.addEventListener("popstate", route);
window.addEventListener("load", start);
