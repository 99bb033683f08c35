// Mailwarden web UI: a client of the REST API only. No framework, no build step, nothing from
// the internet. Every value from the API reaches the page through textContent or attributes
// set by the DOM API, never through innerHTML.

const state = { user: null, csrf: sessionStorage.getItem("mw_csrf") || "", schema: null, notice: "" };

// --- DOM helpers --------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false && n !== ""));
}

function toast(text) {
  const box = document.getElementById("toast");
  const item = h("div", {}, text);
  box.append(item);
  setTimeout(() => item.remove(), 5000);
}

const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const fmtBytes = (n) => (n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n > 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n || 0} B`);

// --- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.field = err.field;
    this.errors = err.errors || (err.field ? [{ field: err.field, message: err.message }] : []);
    this.currentRevision = err.current_revision;
  }
}

// contentType: the body goes as it is (a File or bytes), not as JSON.
async function api(method, path, body, { ifMatch, contentType } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = state.csrf;
  if (ifMatch !== undefined) headers["If-Match"] = `"${ifMatch}"`;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : contentType ? body : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== "/api/session") {
    state.user = null;
    location.hash = "#/login";
    throw new ApiError(401, data);
  }
  if (response.status === 403 && data && data.error && data.error.code === "portal_disabled") {
    // The administrators turned the quarantine portal off: the session is worth nothing now.
    state.user = null;
    state.notice = data.error.message;
    location.hash = "#/login";
    throw new ApiError(403, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// --- shell --------------------------------------------------------------------------------

function updateShell() {
  const top = document.getElementById("top");
  top.hidden = !state.user;
  if (!state.user) return;
  document.getElementById("who").textContent = `${state.user.username} (${state.user.role})`;
  for (const link of document.querySelectorAll("#nav a")) {
    const roles = link.dataset.roles;
    link.hidden = roles ? !roles.split(" ").includes(state.user.role) : false;
    link.classList.toggle("active", location.hash.startsWith(link.getAttribute("href")));
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("DELETE", "/api/session"); } catch { /* logged out either way */ }
  state.user = null;
  sessionStorage.removeItem("mw_csrf");
  location.hash = "#/login";
});
document.getElementById("menu-toggle").addEventListener("click", (event) => {
  const nav = document.getElementById("nav");
  nav.classList.toggle("open");
  event.target.setAttribute("aria-expanded", nav.classList.contains("open"));
});

// --- views --------------------------------------------------------------------------------

function viewLogin(arg, render) {
  const error = h("p", { class: "errors", role: "alert" }, state.notice);
  state.notice = "";
  const totp = h("input", { id: "totp", name: "totp", inputmode: "numeric", autocomplete: "one-time-code" });
  const totpRow = h("div", { hidden: true }, h("label", { for: "totp" }, "One-time code"), totp);
  const form = h("form", { class: "login", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = { username: form.username.value, password: form.password.value };
    if (totp.value) body.totp = totp.value;
    try {
      const session = await api("POST", "/api/session", body);
      state.user = { username: session.username, role: session.role };
      state.csrf = session.csrf_token;
      sessionStorage.setItem("mw_csrf", state.csrf);
      location.hash = session.role === "quser" ? "#/quarantine" : "#/dashboard";
    } catch (e) {
      if (/one-time code/.test(e.message)) totpRow.hidden = false;
      error.textContent = e.code === "portal_disabled"
        ? "The quarantine portal is turned off, so quarantine users cannot log in. Ask your administrator."
        : e.message;
    }
  } },
  h("h1", {}, "Mailwarden"),
  h("label", { for: "username" }, "User name or email address"),
  h("input", { id: "username", name: "username", autocomplete: "username", required: true, autofocus: true }),
  h("label", { for: "password" }, "Password"),
  h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true }),
  totpRow,
  h("p", {}, h("button", { class: "primary", type: "submit" }, "Log in")),
  error);
  // People whose mail is quarantined here need no password: a link by mail logs them in.
  const linkNote = h("p", { role: "status" });
  const linkForm = h("form", { class: "login link-login", onsubmit: async (event) => {
    event.preventDefault();
    linkNote.textContent = "";
    try {
      const out = await api("POST", "/api/portal/link", { address: linkForm.address.value.trim() });
      linkNote.textContent = out.message;
    } catch (e) {
      linkNote.textContent = e.code === "portal_disabled"
        ? "The quarantine portal is turned off. Ask your administrator." : e.message;
    }
  } },
  h("h2", {}, "No password?"),
  h("label", { for: "link-address" }, "Your email address: we send you a link that logs you in to your quarantine"),
  h("input", { id: "link-address", name: "address", type: "email", autocomplete: "email", required: true }),
  h("p", {}, h("button", { type: "submit" }, "Send me a login link")),
  linkNote);
  render(form, linkForm);
  form.username.focus();
}

// The first-run wizard: a fresh appliance has no admin; the console shows a one-time code.
async function viewSetup(arg, render) {
  const status = await api("GET", "/api/setup");
  if (!status.needed) {
    render(h("div", { class: "login" }, h("h1", {}, "Mailwarden"),
      h("p", {}, "This appliance is set up already."), h("p", {}, h("a", { href: "#/login" }, "Log in"))));
    return;
  }
  const fields = [
    ["setup_code", "Setup code (shown on the appliance's console)", { autocomplete: "off", spellcheck: "false", placeholder: "XXXX-XXXX-XXXX-XXXX" }],
    ["admin.password", "Admin password (at least 10 characters)", { type: "password", autocomplete: "new-password", minlength: "10" }],
    ["confirm", "Admin password again", { type: "password", autocomplete: "new-password" }],
    ["hostname", "Host name of this gateway (e.g. mx1.example.org)", { autocomplete: "off" }],
    ["domains[0].name", "Your mail domain (e.g. example.org)", { autocomplete: "off" }],
    ["domains[0].server", "Its internal mail server (name or IP address)", { autocomplete: "off" }],
    ["domains[0].port", "Its SMTP port", { type: "number", min: "1", max: "65535", value: "25" }],
    ["timezone", "Time zone (e.g. Europe/Berlin; empty: leave as it is)",
      { autocomplete: "off", required: false, value: Intl.DateTimeFormat().resolvedOptions().timeZone || "" }],
  ];
  const inputs = {};
  const rows = fields.map(([name, label, attrs]) => {
    const id = `setup-${name.replace(/[^a-z0-9]+/gi, "-")}`;
    inputs[name] = h("input", { id, name, required: true, ...attrs });
    return h("div", {}, h("label", { for: id }, label), inputs[name],
      h("div", { class: "error", "data-error-for": name, id: `${id}-error` }));
  });
  const messages = h("p", { class: "errors", role: "alert" });
  const submit = h("button", { class: "primary", type: "submit" }, "Set up Mailwarden");
  const form = h("form", { class: "login wizard", onsubmit: async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
    messages.textContent = "";
    if (inputs.confirm.value !== inputs["admin.password"].value) {
      form.querySelector('[data-error-for="confirm"]').textContent = "The two passwords differ.";
      inputs.confirm.focus();
      return;
    }
    const body = { setup_code: inputs.setup_code.value, answers: {
      version: 1, hostname: inputs.hostname.value.trim(),
      admin: { password: inputs["admin.password"].value },
      domains: [{ name: inputs["domains[0].name"].value.trim(), server: inputs["domains[0].server"].value.trim(),
                  port: Number(inputs["domains[0].port"].value || 25) }] } };
    if (inputs.timezone.value.trim()) body.answers.timezone = inputs.timezone.value.trim();
    submit.disabled = true;
    submit.textContent = "Applying… (checking and reloading the mail services)";
    try {
      const session = await api("POST", "/api/setup", body);
      state.user = { username: session.username, role: session.role };
      state.csrf = session.csrf_token;
      sessionStorage.setItem("mw_csrf", state.csrf);
      toast(`Mailwarden is set up (configuration revision ${session.revision}).`);
      location.hash = "#/dashboard";
    } catch (e) {
      const errors = e.errors.length ? e.errors : [{ field: e.field, message: e.message }];
      const unplaced = [];
      for (const err of errors) {
        const target = form.querySelector(`[data-error-for="${CSS.escape((err.field || "").replace(/^answers\./, ""))}"]`);
        if (target) target.textContent = err.message;
        else unplaced.push(err.field ? `${err.field}: ${err.message}` : err.message);
      }
      messages.textContent = unplaced.join("\n");
      const first = form.querySelector("[data-error-for]:not(:empty)");
      if (first) first.previousElementSibling.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = "Set up Mailwarden";
    }
  } },
  h("h1", {}, "Welcome to Mailwarden"),
  h("p", { class: "muted" }, "This appliance has no administrator yet. Enter the setup code from its console, then the few settings it needs to start relaying mail. Everything else can be changed later."),
  rows, h("p", {}, submit), messages);
  render(form);
  inputs.setup_code.focus();
}

function barChart(hourly) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 480 180");
  svg.setAttribute("role", "img");
  const byHour = new Map();
  for (const row of hourly) {
    const entry = byHour.get(row.time) || { messages: 0, spam: 0, virus: 0 };
    entry.messages += row.messages; entry.spam += row.spam; entry.virus += row.virus;
    byHour.set(row.time, entry);
  }
  const hours = [...byHour.keys()].sort();
  const max = Math.max(1, ...[...byHour.values()].map((v) => v.messages));
  const width = 480 / Math.max(hours.length, 24);
  svg.setAttribute("aria-label", `Mail per hour, ${hours.length} hours, peak ${max}`);
  hours.forEach((hour, i) => {
    const v = byHour.get(hour);
    for (const [value, color] of [[v.messages, "#1f5fbf"], [v.spam + v.virus, "#b3261e"]]) {
      const rect = document.createElementNS(ns, "rect");
      const height = (value / max) * 160;
      rect.setAttribute("x", i * width + 2);
      rect.setAttribute("y", 170 - height);
      rect.setAttribute("width", Math.max(width - 4, 1));
      rect.setAttribute("height", height);
      rect.setAttribute("fill", color);
      svg.append(rect);
    }
  });
  return svg;
}

async function viewDashboard(arg, render) {
  render(h("h1", {}, "Dashboard"), h("p", { class: "muted" }, "Loading…"));
  const [stats, services, queue] = await Promise.all([
    api("GET", "/api/statistics"),
    api("GET", "/api/system/services").catch(() => ({ items: [] })),
    api("GET", "/api/system/queue").catch(() => ({ count: "?" })),
  ]);
  const t = stats.totals || {};
  const inbound = t.in || { messages: 0, spam: 0, virus: 0, bytes: 0 };
  const outbound = t.out || { messages: 0, spam: 0, virus: 0, bytes: 0 };
  const rate = (part, all) => (all ? `${((100 * part) / all).toFixed(1)} %` : "–");
  const card = (value, label) => h("div", { class: "card" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
  render(
    h("h1", {}, "Dashboard"),
    h("p", { class: "muted" }, "Last 24 hours"),
    h("div", { class: "cards" },
      card(inbound.messages, "inbound messages"), card(outbound.messages, "outbound messages"),
      card(rate(inbound.spam, inbound.messages), "spam rate"),
      card(inbound.virus + outbound.virus, "viruses"),
      card(fmtBytes(inbound.bytes + outbound.bytes), "traffic"), card(queue.count, "in the queue")),
    h("h2", {}, "Mail per hour (blue) and spam and viruses (red)"),
    barChart(stats.hourly || []),
    h("h2", {}, "Services"),
    h("table", {}, h("tbody", {}, services.items.map((s) => h("tr", {},
      h("td", {}, s.name),
      h("td", { class: s.healthy ? "ok" : "bad" }, s.healthy ? "running" : `down: ${s.error || ""}`))))),
    h("h2", {}, "Top senders"),
    h("table", {}, h("tbody", {}, (stats.top_senders || []).map((r) => h("tr", {}, h("td", {}, r.sender || "<>"), h("td", {}, r.messages))))),
  );
}

async function viewQuarantine(arg, render) {
  const filters = { kind: "", q: "" };
  let items = [];
  let cursor = 0;
  const selected = new Set();
  const frame = h("iframe", { title: "Message preview", sandbox: "", referrerpolicy: "no-referrer" });
  const details = h("div");
  const tbody = h("tbody");
  const progress = h("div", { class: "progress", hidden: true, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, h("div"));
  const progressText = h("span", { class: "muted", "aria-live": "polite" });
  const all = h("input", { type: "checkbox", "aria-label": "select every message shown",
    onchange: (e) => { for (const item of items) e.target.checked ? selected.add(item.id) : selected.delete(item.id); renderRows(); } });

  async function load() {
    const params = new URLSearchParams({ limit: "500" });
    if (filters.kind) params.set("kind", filters.kind);
    if (filters.q) params.set("q", filters.q);
    items = (await api("GET", `/api/quarantine?${params}`)).items;
    cursor = Math.min(cursor, Math.max(items.length - 1, 0));
    renderRows();
  }

  function renderRows() {
    tbody.replaceChildren(...items.map((item, i) => {
      const box = h("input", { type: "checkbox", "aria-label": `select ${item.subject || item.id}`,
        onchange: (e) => { e.target.checked ? selected.add(item.id) : selected.delete(item.id); } });
      box.checked = selected.has(item.id);
      return h("tr", { class: i === cursor ? "selected" : "", tabindex: "0", dataset: { id: item.id },
        onclick: () => { cursor = i; renderRows(); open(item); } },
        h("td", {}, box), h("td", {}, fmtTime(item.time)), h("td", {}, item.kind),
        h("td", {}, item.sender || "<>"), h("td", {}, item.subject || "(no subject)"),
        h("td", {}, item.virus || (item.spam_score !== null ? item.spam_score.toFixed(1) : "")));
    }));
    if (!items.length) tbody.append(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "Nothing in the quarantine.")));
  }

  async function open(item) {
    frame.src = `/api/quarantine/${encodeURIComponent(item.id)}/preview?format=html`;
    const view = await api("GET", `/api/quarantine/${encodeURIComponent(item.id)}/preview`);
    details.replaceChildren(
      h("h2", {}, view.subject || "(no subject)"),
      h("p", {}, `From ${view.from} to ${Object.keys(item.recipients).join(", ")}`),
      // Only what the server offers for this message and user (a virus is not released by
      // quarantine users unless the administrators allow it).
      h("div", { class: "toolbar" },
        offers(item, "release") && h("button", { class: "primary", onclick: () => act(item, "release") }, "Release (r)"),
        // --- learning ---
        offers(item, "release") && item.kind === "spam" && h("button", { onclick: () => act(item, "release", { learn: true }) }, "Release and learn as not spam"),
        offers(item, "spam") && h("button", { onclick: () => act(item, "spam") }, "Mark as spam"),
        offers(item, "spam") && offers(item, "delete") && h("button", { class: "danger", onclick: () => act(item, "spam", { delete: true }) }, "Mark as spam and delete"),
        // --- end of learning ---
        offers(item, "delete") && h("button", { class: "danger", onclick: () => act(item, "delete") }, "Delete (d)"),
        offers(item, "allow") && h("button", { onclick: () => act(item, "allow") }, "Always allow sender"),
        offers(item, "block") && h("button", { onclick: () => act(item, "block") }, "Always block sender"),
        h("a", { href: `/api/quarantine/${encodeURIComponent(item.id)}/raw` }, "Download")),
      offers(item, "delete") && !offers(item, "release") && isVirus(item)
        ? h("p", { class: "muted" }, "This message carries a virus: only an administrator can release it.") : "",
      view.attachments.length ? h("p", {}, "Attachments: ", view.attachments.map((a) => `${a.filename} (${a.content_type})`).join(", ")) : "");
  }

  function offers(item, action) { return (item.actions || []).includes(action); }
  function isVirus(item) { return item.kind === "virus" || Boolean(item.virus); }
  // Bulk actions are for the staff who act on messages; the server refuses everyone else.
  const bulkAllowed = ["admin", "qmanager", "helpdesk"].includes(state.user.role);

  async function act(item, action, body = {}) {
    if (!offers(item, action)) return;
    try {
      const out = await api("POST", `/api/quarantine/${encodeURIComponent(item.id)}/${action}`, body);
      toast(out.learned ? learnedText(out.learned) + (out.released ? ", released" : out.deleted ? ", deleted" : "") : `${action}: done`);
      details.replaceChildren();
      frame.removeAttribute("src");
      await load();
    } catch (e) { toast(e.message); }
  }

  async function bulk(action) {
    const ids = [...selected];
    if (!ids.length) { toast("Select messages first"); return; }
    progress.hidden = false;
    let done = 0;
    let failed = 0;
    const verb = action === "release" ? "Released" : "Deleted";
    try {
      for (let i = 0; i < ids.length; i += 50) {
        const out = await api("POST", "/api/quarantine/bulk", { ids: ids.slice(i, i + 50), action });
        failed += Object.values(out.results || {}).filter((r) => r.error).length;
        done = Math.min(ids.length, i + 50);
        const percent = Math.round((100 * done) / ids.length);
        progress.firstChild.style.width = `${percent}%`;
        progress.setAttribute("aria-valuenow", String(percent));
        progressText.textContent = `${verb} ${done} of ${ids.length}…`;
      }
      toast(`${action}: ${done - failed} messages${failed ? `, ${failed} failed` : ""}`);
    } catch (e) {
      toast(`${action} stopped after ${done} of ${ids.length}: ${e.message}`);
    } finally {
      selected.clear();
      all.checked = false;
      progress.hidden = true;
      progressText.textContent = "";
      await load();
    }
  }

  // Digests (admin, qmanager): what one recipient's digest would list now, and sending it.
  const digestAllowed = ["admin", "qmanager"].includes(state.user.role);
  const digestView = h("div", { class: "digest-preview" });
  const digestForm = h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); digest("GET"); } },
    h("input", { name: "address", type: "email", required: true, placeholder: "recipient@example.org", "aria-label": "Digest recipient" }),
    h("button", { type: "submit" }, "Preview digest"),
    h("button", { type: "button", onclick: () => { if (digestForm.reportValidity()) digest("POST"); } }, "Send digest now"));
  async function digest(method) {
    const address = digestForm.address.value.trim();
    try {
      const out = method === "GET"
        ? await api("GET", `/api/quarantine/digest?${new URLSearchParams({ address })}`)
        : await api("POST", "/api/quarantine/digest", { address });
      if (method === "POST") toast(`Digest sent to ${out.address}`);
      digestView.replaceChildren(
        h("p", {}, h("strong", {}, out.subject), ` (${out.messages} message${out.messages === 1 ? "" : "s"})`),
        h("pre", { class: "digest-text" }, out.text));
    } catch (e) {
      digestView.replaceChildren(h("p", { class: "muted" }, e.message));
    }
  }

  const search = h("input", { type: "search", placeholder: "Search subject or sender", "aria-label": "Search",
    onchange: (e) => { filters.q = e.target.value; load(); } });
  const kind = h("select", { "aria-label": "Kind", onchange: (e) => { filters.kind = e.target.value; load(); } },
    h("option", { value: "" }, "All kinds"), ...["spam", "virus", "attachment", "blocked"].map((k) => h("option", { value: k }, k)));
  render(
    h("h1", {}, "Quarantine"),
    h("div", { class: "toolbar" }, kind, search,
      bulkAllowed && h("button", { onclick: () => bulk("release") }, "Release selected"),
      bulkAllowed && h("button", { class: "danger", onclick: () => bulk("delete") }, "Delete selected"),
      h("span", { class: "muted" }, "Keys: ", h("span", { class: "kbd" }, "j"), "/", h("span", { class: "kbd" }, "k"), " move, ",
        h("span", { class: "kbd" }, "r"), " release, ", h("span", { class: "kbd" }, "d"), " delete")),
    progress, progressText,
    h("div", { class: "split" },
      h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, [all, "Time", "Kind", "Sender", "Subject", "Score / virus"].map((c) => h("th", {}, c)))), tbody),
      h("div", { class: "preview" }, details, frame)),
    digestAllowed && h("section", { class: "digests" }, h("h2", {}, "Digests"),
      h("p", { class: "muted" }, "What a recipient's digest lists now (what was quarantined for them since their last one), and sending it without waiting for its time."),
      digestForm, digestView));
  document.onkeydown = (event) => {
    if (!location.hash.startsWith("#/quarantine") || ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) return;
    if (event.key === "j" && cursor < items.length - 1) { cursor++; renderRows(); open(items[cursor]); }
    else if (event.key === "k" && cursor > 0) { cursor--; renderRows(); open(items[cursor]); }
    else if (event.key === "r" && items[cursor]) act(items[cursor], "release");
    else if (event.key === "d" && items[cursor]) act(items[cursor], "delete");
  };
  await load();
}

// The add form of a sender list (with a recipient field for a staff member's per-recipient
// view), and its error line; said(body) is the toast once added.
function listEntryForm(path, withRecipient, said, load) {
  const error = h("p", { class: "errors", role: "alert" });
  const form = h("form", { class: "toolbar", onsubmit: async (event) => {
    event.preventDefault();
    const body = { sender: form.sender.value.trim(), kind: form.kind.value };
    if (withRecipient) body.recipient = form.recipient.value.trim();
    try {
      await api("POST", path, body);
      error.textContent = "";
      toast(said(body));
      form.sender.value = "";
      await load();
    } catch (err) { error.textContent = err.message; }
  } },
  withRecipient ? h("input", { name: "recipient", type: "email", required: true, placeholder: "recipient@example.org", "aria-label": "Recipient" }) : "",
  h("input", { name: "sender", required: true, placeholder: "sender@example.com or @example.com", "aria-label": "Sender" }),
  h("select", { name: "kind", "aria-label": "Allow or block" }, h("option", { value: "block" }, "Block"), h("option", { value: "allow" }, "Allow")),
  h("button", { type: "submit", class: "primary" }, "Add"));
  return { form, error };
}

// A sender list's search box and kind filter, writing into filters and loading again.
function listFilters(filters, load, placeholder, label) {
  const search = h("input", { type: "search", placeholder, "aria-label": label,
    onchange: (e) => { filters.q = e.target.value; load(); } });
  const kind = h("select", { "aria-label": "Kind", onchange: (e) => { filters.kind = e.target.value; load(); } },
    h("option", { value: "" }, "Allow and block"), h("option", { value: "allow" }, "Allowed"), h("option", { value: "block" }, "Blocked"));
  return [search, kind];
}

async function viewLists(arg, render) {
  // A quarantine user's own list; the staff see everyone's and search them.
  const own = state.user.role === "quser";
  if (!own && arg === "global") return viewGlobalLists(render);
  const writer = ["admin", "qmanager", "helpdesk", "quser"].includes(state.user.role);
  const filters = { q: "", kind: "" };
  const tbody = h("tbody");
  async function load() {
    const params = new URLSearchParams({ limit: "500" });
    if (filters.q) params.set("q", filters.q);
    if (filters.kind) params.set("kind", filters.kind);
    const items = (await api("GET", `/api/lists?${params}`)).items;
    tbody.replaceChildren(...items.map((e) => h("tr", {},
      own ? "" : h("td", {}, e.recipient), h("td", {}, e.sender), h("td", {}, e.kind), h("td", {}, fmtTime(e.created)),
      h("td", {}, writer && h("button", { class: "danger", "aria-label": `Remove ${e.sender}`, onclick: async () => {
        try {
          await api("DELETE", "/api/lists", own ? { sender: e.sender } : { sender: e.sender, recipient: e.recipient });
          toast(`${e.sender} removed`);
          await load();
        } catch (err) { toast(err.message); }
      } }, "Remove")))));
    if (!items.length) tbody.append(h("tr", {}, h("td", { colspan: own ? "4" : "5", class: "muted" }, "No entries.")));
  }
  const { form, error } = listEntryForm("/api/lists", !own, (body) => `${body.sender}: ${body.kind}`, load);
  const [search, kind] = listFilters(filters, load, "Search sender or recipient", "Search lists");
  render(
    h("h1", {}, own ? "My sender lists" : "Sender lists"),
    own ? "" : listsNav(false),
    h("p", { class: "muted" }, own
      ? "Mail from a sender you allow reaches you even when it looks like spam (never a virus); mail from a sender you block is held in your quarantine. A sender is an address, or @domain for everyone there."
      : "Each recipient's allowed and blocked senders (an address, or @domain). The rules honour them for that recipient; viruses are never let through."),
    writer ? form : "", error,
    own ? "" : h("div", { class: "toolbar" }, search, kind),
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ...(own ? [] : ["Recipient"]).concat(["Sender", "Kind", "Added", ""]).map((c) => h("th", {}, c)))), tbody));
  await load();
}

// --- global sender lists (staff) ------------------------------------------------------------

function listsNav(global) {
  return h("nav", { class: "toolbar lists-nav", "aria-label": "Which sender lists" },
    h("a", { href: "#/lists", "aria-current": global ? null : "page" }, "Per recipient"),
    h("a", { href: "#/lists/global", "aria-current": global ? "page" : null }, "Global"));
}

async function viewGlobalLists(render) {
  const writer = ["admin", "qmanager"].includes(state.user.role);
  const filters = { q: "", kind: "" };
  const tbody = h("tbody");
  async function load() {
    const params = new URLSearchParams({ limit: "500" });
    if (filters.q) params.set("q", filters.q);
    if (filters.kind) params.set("kind", filters.kind);
    const items = (await api("GET", `/api/lists/global?${params}`)).items;
    tbody.replaceChildren(...items.map((e) => h("tr", {},
      h("td", {}, e.sender), h("td", {}, e.kind), h("td", {}, e.added_by), h("td", {}, fmtTime(e.created)),
      h("td", {}, writer && h("button", { class: "danger", "aria-label": `Remove ${e.sender}`, onclick: async () => {
        try {
          await api("DELETE", "/api/lists/global", { sender: e.sender });
          toast(`${e.sender} removed from the global lists`);
          await load();
        } catch (err) { toast(err.message); }
      } }, "Remove")))));
    if (!items.length) tbody.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No entries.")));
  }
  const { form, error } = listEntryForm("/api/lists/global", false, (body) => `${body.sender}: ${body.kind} for everyone`, load);
  const [search, kind] = listFilters(filters, load, "Search sender", "Search global lists");
  render(
    h("h1", {}, "Sender lists"),
    listsNav(true),
    h("p", { class: "muted" }, "Allowed and blocked senders for every recipient (an address, or @domain). Mail from a blocked sender is held in the quarantine; mail from an allowed one is not held as spam (a virus always is). A recipient's own entry for a sender comes first."),
    writer ? form : "", error,
    h("div", { class: "toolbar" }, search, kind),
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ...["Sender", "Kind", "Added by", "Added", ""].map((c) => h("th", {}, c)))), tbody));
  await load();
}

// --- end of global sender lists ---------------------------------------------------------------

async function viewTracking(arg, render) {
  const results = h("tbody");
  const form = h("form", { class: "toolbar", onsubmit: async (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of ["sender", "recipient", "queue_id"]) if (form[name].value) params.set(name, form[name].value);
    const data = await api("GET", `/api/tracking?${params}`);
    results.replaceChildren(...data.items.map((m) => h("tr", {},
      h("td", {}, fmtTime(m.time)), h("td", {}, m.direction), h("td", {}, m.queue_id || ""),
      h("td", {}, m.sender || "<>"), h("td", {}, m.subject || ""),
      h("td", {}, m.deliveries.map((d) => `${d.recipient}: ${d.action} (${d.rule || "-"})`).join("; ")))));
  } },
  h("input", { name: "sender", placeholder: "Sender", "aria-label": "Sender" }),
  h("input", { name: "recipient", placeholder: "Recipient", "aria-label": "Recipient" }),
  h("input", { name: "queue_id", placeholder: "Queue id", "aria-label": "Queue id" }),
  h("button", { class: "primary", type: "submit" }, "Search"));
  render(h("h1", {}, "Message tracking"), form,
    // --- learning ---
    ["admin", "qmanager"].includes(state.user.role) && h("p", { class: "muted" }, "A delivered message that is spam is no longer here to mark: ",
      h("a", { href: "#/learning" }, "upload its copy on the Learning page"), " to learn it as spam."),
    // --- end of learning ---
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ["Time", "Dir", "Queue id", "Sender", "Subject", "Outcome"].map((c) => h("th", {}, c)))), results));
  form.requestSubmit();
}

// --- learning: what Rspamd's Bayes has learned, and uploads to learn from ------------------

function learnedText(learned) {
  return learned.result === "already_learned" ? `Already learned as ${learned.as}` : `Learned as ${learned.as}`;
}

async function viewLearning(arg, render) {
  const canLearn = ["admin", "qmanager"].includes(state.user.role);
  const status = await api("GET", "/api/learning");
  const { bayes, counts } = status;
  const card = (label, value, note) => h("div", { class: "card" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label),
    note ? h("div", { class: "muted" }, note) : "");
  const needed = (n) => (bayes.enabled && n < bayes.min_learns ? `${bayes.min_learns - n} more before Bayes scores` : "");
  const report = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "toolbar learn-upload", onsubmit: async (event) => {
    event.preventDefault();
    const files = [...form.files.files];
    if (!files.length) { toast("Choose one or more messages (.eml) or mailboxes (.mbox)"); return; }
    const kind = form.kind.value;
    const rows = [];
    for (const file of files) {
      const type = /\.mbox$/i.test(file.name) ? "application/mbox" : "message/rfc822";
      try {
        const out = await api("POST", `/api/learning/${kind}`, file, { contentType: type });
        rows.push(h("tr", {}, h("td", {}, file.name), h("td", {}, String(out.messages)), h("td", { class: "ok" }, String(out.learned)),
          h("td", {}, String(out.already_learned)), h("td", { class: out.failed ? "bad" : "" },
            out.failed ? out.results.filter((r) => !["learned", "already_learned"].includes(r.result)).map((r) => `#${r.index + 1}: ${r.message}`).join("; ") : "0")));
      } catch (e) {
        rows.push(h("tr", {}, h("td", {}, file.name), h("td", { colspan: "4", class: "bad" }, e.message)));
      }
    }
    report.replaceChildren(h("table", {}, h("thead", {}, h("tr", {}, ["File", "Messages", `Learned as ${kind}`, "Already learned", "Not learned"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
    toast(`Learning as ${kind}: done`);
    await drawCounts();
  } },
  h("label", {}, "Learn as ", h("select", { name: "kind", "aria-label": "Learn as" }, h("option", { value: "spam" }, "spam"), h("option", { value: "ham" }, "not spam (ham)"))),
  h("input", { type: "file", name: "files", multiple: true, accept: ".eml,.mbox,message/rfc822,application/mbox", "aria-label": "Messages to learn" }),
  h("button", { class: "primary", type: "submit" }, "Learn"));
  const cards = h("div", { class: "cards" });
  const recent = h("tbody");
  function drawCards(now) {
    cards.replaceChildren(
      card("Learned as spam", now ? String(now.spam) : "?", now ? needed(now.spam) : ""),
      card("Learned as ham (not spam)", now ? String(now.ham) : "?", now ? needed(now.ham) : ""),
      card("Bayes", bayes.enabled ? "on" : "off", bayes.enabled ? `autolearn ${bayes.autolearn ? "on" : "off"}; scores after ${bayes.min_learns} of each` : "spam.bayes.enabled is off: nothing is learned"));
  }
  function drawRecent(items) {
    recent.replaceChildren(...items.map((e) => h("tr", {}, h("td", {}, fmtTime(e.time)), h("td", {}, e.actor),
      h("td", {}, e.action === "learn.spam" ? "spam" : "ham"), h("td", {}, e.target || ""),
      h("td", {}, e.detail ? (e.detail.result || "") + (e.detail.failed ? ` (${e.detail.failed} not learned)` : "") : ""))));
    if (!items.length) recent.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "Nothing learned yet.")));
  }
  async function drawCounts() {
    const now = await api("GET", "/api/learning");
    drawCards(now.counts);
    drawRecent(now.recent);
  }
  drawCards(counts);
  drawRecent(status.recent);
  render(
    h("h1", {}, "Learning"),
    h("p", { class: "muted" }, "Rspamd's Bayes classifier learns from the messages you mark: releasing a spam as not spam teaches it ham, marking a message as spam teaches it spam. It scores mail only after it has learned enough of each."),
    status.error ? h("p", { class: "errors" }, `Rspamd did not answer: ${status.error}`) : "",
    cards,
    canLearn && h("section", { class: "learn" }, h("h2", {}, "Learn from messages"),
      h("p", { class: "muted" }, "Upload delivered messages (.eml, as saved from a mail program or forwarded as an attachment) or whole mailboxes (.mbox)."),
      form, report),
    h("h2", {}, "Recent learning"),
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ["Time", "Who", "As", "Message", "Result"].map((c) => h("th", {}, c)))), recent));
}

// --- end of learning ----------------------------------------------------------------------

// --- settings: forms generated from the OpenAPI schema ------------------------------------

async function loadSchema() {
  if (!state.schema) state.schema = (await api("GET", "/api/openapi.json")).components.schemas;
  return state.schema;
}

function resolve(schema) {
  const schemas = state.schema;
  while (schema && schema.$ref) schema = schemas[schema.$ref.split("/").pop()];
  if (schema && schema.anyOf) {
    const nonNull = schema.anyOf.filter((s) => s.type !== "null");
    if (nonNull.length === 1) return { ...resolve(nonNull[0]), nullable: true, description: schema.description || nonNull[0].description };
  }
  return schema || {};
}

function fieldFor(path, schema, value) {
  const s = resolve(schema);
  const label = path.split(".").pop();
  const help = s.description ? h("div", { class: "help" }, s.description) : null;
  const error = h("div", { class: "error", dataset: { errorFor: path }, role: "alert" });
  let input;
  if (s.type === "object" && s.properties) {
    return h("fieldset", { dataset: { path } }, h("legend", {}, label),
      help, ...Object.entries(s.properties).map(([name, sub]) => fieldFor(`${path}.${name}`, sub, (value || {})[name])), error);
  }
  if (s.enum) {
    input = h("select", { id: path }, ...s.enum.map((opt) => {
      const o = h("option", { value: opt }, opt);
      if (opt === value) o.selected = true;
      return o;
    }));
    input.dataset.kind = "enum";
  } else if (s.type === "boolean") {
    input = h("input", { id: path, type: "checkbox" });
    input.checked = Boolean(value);
    input.dataset.kind = "bool";
  } else if (s.type === "integer" || s.type === "number") {
    input = h("input", { id: path, type: "number", step: s.type === "integer" ? "1" : "any", value: value ?? "" });
    input.dataset.kind = s.type;
  } else if (s.type === "string") {
    input = h("input", { id: path, type: "text", value: value ?? "" });
    input.dataset.kind = "string";
  } else if (s.type === "array" && ["string", "integer", "number"].includes(resolve(s.items || {}).type)) {
    input = h("textarea", { id: path, rows: "3" });
    input.value = (value || []).join("\n");
    input.dataset.kind = "lines";
  } else {
    input = h("textarea", { id: path, rows: "8", spellcheck: "false" });
    input.value = JSON.stringify(value ?? null, null, 2);
    input.dataset.kind = "json";
  }
  input.dataset.path = path;
  if (s.nullable) input.dataset.nullable = "1";
  return h("div", { class: "field" }, h("label", { for: path }, label), input, help, error);
}

// The section's value, rebuilt from the inputs' dotted paths.
function readForm(root, prefix) {
  const out = {};
  for (const input of root.querySelectorAll("[data-path]:not(fieldset)")) {
    const whole = input.dataset.path === prefix;
    const rel = whole ? [] : input.dataset.path.slice(prefix.length + 1).split(".");
    let value;
    const raw = input.value;
    switch (input.dataset.kind) {
      case "bool": value = input.checked; break;
      case "integer": case "number": value = raw === "" ? null : Number(raw); break;
      case "lines": {
        // An empty nullable list is "not set" (its default applies), as an empty string is.
        const lines = raw.split("\n").map((l) => l.trim()).filter(Boolean);
        value = !lines.length && input.dataset.nullable ? null : lines;
        break;
      }
      case "json": value = JSON.parse(raw || "null"); break;
      default: value = raw === "" && input.dataset.nullable ? null : raw;
    }
    if (whole) return value;
    let target = out;
    for (const key of rel.slice(0, -1)) target = target[key] ??= {};
    target[rel[rel.length - 1]] = value;
  }
  return out;
}

function showErrors(root, section, errors) {
  for (const el of root.querySelectorAll("[data-error-for]")) el.textContent = "";
  const unplaced = [];
  for (const err of errors) {
    // "domains[0].transport.port" -> the nearest field we rendered for it.
    let path = (err.field || "").replace(/\[\d+\].*$/, "");
    let target = null;
    while (path && !(target = root.querySelector(`[data-error-for="${CSS.escape(path)}"]`))) {
      path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
    }
    if (target) target.textContent = `${err.field}: ${err.message}`;
    else unplaced.push(`${err.field || ""}: ${err.message}`);
  }
  return unplaced;
}

async function viewSettings(section, render) {
  const schemas = await loadSchema();
  const sections = Object.keys(schemas.State.properties).filter((s) => s !== "version");
  if (!section) {
    render(h("h1", {}, "Settings"), h("ul", {}, sections.map((s) => h("li", {}, h("a", { href: `#/settings/${s}` }, s), " — ", resolve(schemas.State.properties[s]).description || ""))));
    return;
  }
  const data = await api("GET", `/api/settings/${encodeURIComponent(section)}`);
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    messages.textContent = "";
    let value;
    try { value = readForm(form, section); } catch (e) { messages.textContent = `Not valid JSON: ${e.message}`; return; }
    const comment = form.comment.value || `${section} changed`;
    save.disabled = true;
    save.textContent = "Applying…";
    try {
      const result = await api("PUT", `/api/settings/${encodeURIComponent(section)}`, { [section]: value, comment }, { ifMatch: revision });
      revision = result.revision;
      showErrors(form, section, []);
      toast(`Applied as revision ${result.revision}${result.reloaded.length ? `; reloaded ${result.reloaded.join(", ")}` : ""}`);
    } catch (e) {
      const rest = showErrors(form, section, e.errors.length ? e.errors : [{ field: e.field, message: e.message }]);
      messages.textContent = e.status === 409 ? `Someone else changed the configuration (now revision ${e.currentRevision}). Reload the page to start from it.` : rest.join("\n");
    } finally {
      save.disabled = false;
      save.textContent = "Apply";
    }
  } });
  let revision = data.revision;
  const messages = h("p", { class: "errors", role: "alert" });
  const save = h("button", { class: "primary", type: "submit" }, "Apply");
  const body = fieldFor(section, schemas.State.properties[section], data[section]);
  if (section === "networks") {
    // The firewall is rendered from these: say who can reach this very page before a change.
    const { management, trusted } = data.networks;
    const admitted = management.length ? management : trusted;
    form.append(h("p", { class: "help", id: "management-hint" },
      "Management networks decide who reaches this web UI and the API (port 8006), and SSH when it is on: the firewall admits only them",
      management.length ? "" : " (none set: the trusted networks)", ". Now: ",
      admitted.length ? admitted.join(", ") : "nobody (console only)",
      ". A list without your own network shuts you out of this page once applied; the console still works."));
  }
  form.append(body, h("div", { class: "field" }, h("label", { for: "comment" }, "Why (kept in the history)"), h("input", { id: "comment", name: "comment" })), h("p", {}, save), messages);
  const extra = section === "notifications" ? notificationActions() : [];
  render(h("h1", {}, `Settings: ${section}`), h("p", {}, h("a", { href: "#/settings" }, "All sections")), form, ...extra);
}

// --- notifications: a test, and the report and alerts as they would go out now -----------
function notificationActions() {
  const output = h("div", { class: "notification-preview", id: "notification-output" });
  const shown = (out) => output.replaceChildren(
    h("p", {}, h("b", {}, out.subject), ` to ${out.recipients.join(", ")}`),
    h("pre", { class: "digest-text" }, out.text));
  async function act(what) {
    try {
      if (what === "test") {
        const out = await api("POST", "/api/notifications/test", {});
        toast(`Test notification sent to ${out.recipients.join(", ")}`);
        shown(out);
      } else if (what === "report") {
        shown(await api("GET", "/api/notifications/report"));
      } else {
        const out = await api("GET", "/api/notifications/alerts");
        output.replaceChildren(
          h("p", {}, out.conditions.length ? "Alert conditions now:" : "No alert condition now."),
          h("ul", {}, ...out.conditions.map((c) => h("li", {}, c))));
        if (out.mail) output.append(h("p", { class: "muted" }, "Not mailed yet; the next run would send:"), h("pre", { class: "digest-text" }, out.mail.text));
      }
    } catch (e) {
      output.replaceChildren(h("p", { class: "errors", role: "alert" }, e.message));
    }
  }
  const admin = state.user.role === "admin";
  return [h("section", { class: "notifications" }, h("h2", {}, "Try them"),
    h("p", { class: "muted" }, "Uses the applied settings: apply a change first. Previews send nothing."),
    h("p", { class: "toolbar" },
      admin && h("button", { type: "button", onclick: () => act("test") }, "Send a test notification"),
      h("button", { type: "button", onclick: () => act("report") }, "Preview the daily report"),
      h("button", { type: "button", onclick: () => act("alerts") }, "Check service alerts")),
    output)];
}
// --- end of notifications ------------------------------------------------------------------

const kindOf = (oneOf) => Object.keys(oneOf).find((k) => oneOf[k] !== null && oneOf[k] !== undefined);
const describeEntry = (entry) => {
  const kind = kindOf(entry);
  const value = entry[kind];
  const text = typeof value === "object" ? JSON.stringify(value, (k, v) => (v === null ? undefined : v)) : value;
  return `${kind} ${text}`;
};
const slug = (text) => text.toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, "").slice(0, 60) || "object";

// Rules: PMG's model (objects, priorities, actions) with the edits an admin makes most often
// (enable/disable, order, add "when mail comes from X, do Y", delete) applied in one revision.
async function viewRules(arg, render) {
  let live = null;
  try { live = await api("GET", "/api/state"); } catch (e) { if (e.status !== 403) throw e; }
  const result = h("div", { "aria-live": "polite" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    result.replaceChildren(h("p", { class: "muted" }, "Testing…"));
    const body = { message: form.message.value, from: form.sender.value,
                   to: form.to.value.split(/[\s,]+/).filter(Boolean) };
    if (form.score.value !== "") body.score = Number(form.score.value);
    if (form.virus.value) body.virus = form.virus.value;
    try {
      const report = await api("POST", "/api/rules/simulate", body);
      result.replaceChildren(...report.recipients.map((r) => h("div", { class: "card" },
        h("p", {}, h("strong", {}, r.recipient), `: ${r.outcome.toUpperCase()}`, r.quarantine_kind ? ` (${r.quarantine_kind})` : "", ` by rule "${r.rule}"`),
        h("ul", {}, r.matches.map((m) => h("li", {}, `${m.rule}: ${m.reasons.join("; ")}`))),
        r.actions.length ? h("p", {}, "Actions: ", r.actions.map((a) => `${a.action} (${a.rule})`).join(", ")) : "",
        h("p", { class: "muted" }, `Subject after: ${r.subject_after}`))));
    } catch (e) {
      result.replaceChildren(h("p", { class: "errors" }, e.field ? `${e.field}: ${e.message}` : e.message));
    }
  } },
  h("div", { class: "field" }, h("label", { for: "message" }, "Message source"),
    h("textarea", { id: "message", name: "message", rows: "8", spellcheck: "false", required: true }, "From: someone@example.com\nSubject: Hello\n\nBody\n")),
  h("div", { class: "field" }, h("label", { for: "sender" }, "Envelope sender"), h("input", { id: "sender", name: "sender", value: "someone@example.com" })),
  h("div", { class: "field" }, h("label", { for: "to" }, "Recipients"), h("input", { id: "to", name: "to", required: true })),
  h("div", { class: "field" }, h("label", { for: "score" }, "Assume spam score"), h("input", { id: "score", name: "score", type: "number", step: "any" })),
  h("div", { class: "field" }, h("label", { for: "virus" }, "Assume virus"), h("input", { id: "virus", name: "virus" })),
  h("p", {}, h("button", { class: "primary", type: "submit" }, "Test against the rules")));
  const simulator = [h("h2", {}, "Test a message against the rules"), form, result];
  if (!live) { render(h("h1", {}, "Rules"), ...simulator); return; }

  let revision = live.revision;
  let rules = live.state.rules.map((r, i) => ({ ...r, _id: i }));
  let objects = { ...live.state.rule_objects };
  const dirty = h("p", { class: "muted", "aria-live": "polite" });
  const errors = h("p", { class: "errors", role: "alert" });
  const tbody = h("tbody");
  const applyButton = h("button", { class: "primary", disabled: true, onclick: () => save() }, "Apply changes");
  const readOnly = state.user.role !== "admin";

  const sorted = () => [...rules].sort((a, b) => b.priority - a.priority || a._id - b._id);
  function changed(what) {
    dirty.textContent = `Not applied yet: ${what}`;
    applyButton.disabled = false;
    draw();
  }
  function move(rule, step) {
    const list = sorted();
    const i = list.indexOf(rule);
    const other = list[i + step];
    if (!other) return;
    if (other.priority === rule.priority) rule.priority = Math.max(0, Math.min(100, rule.priority - step));
    else [rule.priority, other.priority] = [other.priority, rule.priority];
    changed(`moved "${rule.name}"`);
  }
  const objectRows = h("tbody");
  function draw() {
    objectRows.replaceChildren(...Object.entries(objects).map(([name, entries]) => h("tr", {}, h("td", {}, name),
      h("td", {}, entries.length ? entries.map(describeEntry).join("; ") : h("span", { class: "muted" }, "(empty)")))));
    const list = sorted();
    tbody.replaceChildren(...list.map((r, i) => {
      const active = h("input", { type: "checkbox", "aria-label": `rule ${r.name} active`, disabled: readOnly,
        onchange: (e) => { r.active = e.target.checked; changed(`"${r.name}" ${r.active ? "enabled" : "disabled"}`); } });
      active.checked = r.active;
      return h("tr", { dataset: { rule: r.name } },
        h("td", {}, r.priority), h("td", {}, r.name), h("td", {}, r.direction), h("td", {}, active),
        h("td", {}, ["from", "to", "what", "when"].filter((g) => r[g]).map((g) => `${g}: ${r[g].invert ? "not " : ""}${r[g].objects.join(r[g].mode === "all" ? " and " : " or ")}`).join("; ") || "everything"),
        h("td", {}, r.actions.map((a) => kindOf(a)).join(", ")),
        h("td", {}, readOnly ? "" : h("span", { class: "toolbar" },
          h("button", { "aria-label": `move ${r.name} up`, disabled: i === 0, onclick: () => move(r, -1) }, "↑"),
          h("button", { "aria-label": `move ${r.name} down`, disabled: i === list.length - 1, onclick: () => move(r, 1) }, "↓"),
          h("button", { class: "danger", "aria-label": `delete rule ${r.name}`,
            onclick: () => { rules = rules.filter((x) => x !== r); changed(`deleted "${r.name}"`); } }, "Delete"))));
    }));
  }

  async function save() {
    errors.textContent = "";
    applyButton.disabled = true;
    applyButton.textContent = "Applying…";
    const clean = rules.map(({ _id, ...rule }) => rule);
    try {
      const out = await api("PATCH", "/api/state", { sections: { rules: clean, rule_objects: objects },
        comment: dirty.textContent.replace(/^Not applied yet: /, "rules: ") }, { ifMatch: revision });
      revision = out.revision;
      dirty.textContent = "";
      toast(`Applied as revision ${out.revision}`);
    } catch (e) {
      applyButton.disabled = false;
      errors.textContent = e.status === 409 ? `Someone else changed the configuration (now revision ${e.currentRevision}). Reload the page to start from it.`
        : (e.errors.length ? e.errors : [e]).map((x) => `${x.field ? `${x.field}: ` : ""}${x.message}`).join("\n");
    } finally {
      applyButton.textContent = "Apply changes";
    }
  }

  // "When mail comes from <domain or address>, do <action>": the rule and its object at once.
  const fromKind = (text) => (text.includes("@") ? "email" : "domain");
  const addForm = h("form", { class: "card", onsubmit: (event) => {
    event.preventDefault();
    const f = addForm.elements;
    const name = f["rule-name"].value.trim();
    const senders = f["rule-from"].value.split(/[\s,]+/).filter(Boolean);
    const action = f["rule-action"].value;
    const param = f["rule-param"].value;
    const rule = { name, priority: Number(f["rule-priority"].value || 50), direction: f["rule-direction"].value, active: true, _id: rules.length + 1000 };
    if (senders.length) {
      let objectName = slug(name);
      while (objects[objectName]) objectName = `${objectName}_2`.slice(0, 64);
      objects = { ...objects, [objectName]: senders.map((s) => ({ [fromKind(s)]: s })) };
      rule.from = { objects: [objectName] };
    }
    rule.actions = [{
      tag_subject: { tag_subject: { text: param || null } },
      add_header: { add_header: { name: "X-Mailwarden-Rule", value: param || name } },
      quarantine: { quarantine: { kind: "auto" } },
      block: { block: {} }, accept: { accept: {} },
      reject: { reject: { message: param || "5.7.1 Message rejected by policy" } },
    }[action]];
    rules = [...rules, rule];
    addForm.reset();
    changed(`added "${name}"`);
  } },
  h("h2", {}, "Add a rule"),
  h("div", { class: "field" }, h("label", { for: "rule-name" }, "Name"), h("input", { id: "rule-name", name: "rule-name", required: true, maxlength: "80" })),
  h("div", { class: "field" }, h("label", { for: "rule-from" }, "When mail comes from"), h("input", { id: "rule-from", name: "rule-from", placeholder: "example.com, boss@example.org" }),
    h("div", { class: "help" }, "Domains or addresses, separated by commas; empty means any sender.")),
  h("div", { class: "field" }, h("label", { for: "rule-direction" }, "Direction"),
    h("select", { id: "rule-direction", name: "rule-direction" }, h("option", { value: "in" }, "inbound"), h("option", { value: "out" }, "outbound"), h("option", { value: "both" }, "both"))),
  h("div", { class: "field" }, h("label", { for: "rule-action" }, "Then"),
    h("select", { id: "rule-action", name: "rule-action" },
      h("option", { value: "tag_subject" }, "tag the subject with…"), h("option", { value: "add_header" }, "add the header X-Mailwarden-Rule: …"),
      h("option", { value: "quarantine" }, "quarantine"), h("option", { value: "block" }, "block (discard)"),
      h("option", { value: "accept" }, "accept (skip later rules)"), h("option", { value: "reject" }, "reject with…"))),
  h("div", { class: "field" }, h("label", { for: "rule-param" }, "Text"), h("input", { id: "rule-param", name: "rule-param", placeholder: "[EXTERNAL]" })),
  h("div", { class: "field" }, h("label", { for: "rule-priority" }, "Priority (0–100, higher first)"), h("input", { id: "rule-priority", name: "rule-priority", type: "number", min: "0", max: "100", value: "50" })),
  h("p", {}, h("button", { type: "submit" }, "Add to the list")));

  draw();
  render(h("h1", {}, "Rules"),
    h("p", { class: "muted" }, "The first matching rule with a final action (accept, block, reject, quarantine) decides, per recipient. Objects and every option are also in ",
      h("a", { href: "#/settings/rules" }, "Settings: rules"), " and ", h("a", { href: "#/settings/rule_objects" }, "rule objects"), "."),
    h("div", { class: "toolbar" }, applyButton, dirty), errors,
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ["Priority", "Name", "Direction", "Active", "Matches", "Actions", ""].map((c) => h("th", {}, c)))), tbody),
    readOnly ? "" : addForm,
    h("h2", {}, "Objects"),
    h("table", { class: "responsive" }, objectRows),
    ...simulator);
}

async function viewHistory(arg, render) {
  const data = await api("GET", "/api/state/revisions");
  const diffBox = h("pre", { class: "diff", hidden: true });
  async function showDiff(number) {
    const diff = await api("GET", `/api/state/diff?from=${number - 1}&to=${number}`);
    diffBox.hidden = false;
    diffBox.replaceChildren(...diff.diff.split("\n").map((line) => h("span", { class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, `${line}\n`)));
  }
  async function rollback(number) {
    if (!confirm(`Apply revision ${number} again as a new revision?`)) return;
    try {
      const result = await api("POST", "/api/state/rollback", { revision: number }, { ifMatch: data.current });
      toast(`Rolled back: now revision ${result.revision}`);
      viewHistory(arg, render);
    } catch (e) { toast(e.message); }
  }
  render(h("h1", {}, "Configuration history"),
    h("table", { class: "responsive" }, h("thead", {}, h("tr", {}, ["#", "Time", "Author", "Comment", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, data.items.map((r) => h("tr", { dataset: { revision: r.number } },
        h("td", {}, r.number === data.current ? `${r.number} (live)` : r.number), h("td", {}, r.time), h("td", {}, r.author), h("td", {}, r.comment),
        h("td", {}, r.number > 1 ? h("button", { onclick: () => showDiff(r.number) }, "Changes") : "",
          " ", r.number !== data.current && state.user.role === "admin" ? h("button", { onclick: () => rollback(r.number) }, "Roll back to this") : ""))))),
    diffBox);
}

async function viewUsers(arg, render) {
  const [users, tokens] = await Promise.all([api("GET", "/api/users"), api("GET", "/api/tokens")]);
  const error = h("p", { class: "errors", role: "alert" });
  const form = h("form", { class: "toolbar", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/api/users", { username: form.username.value, password: form.password.value, role: form.role.value });
      toast("User added");
      viewUsers(arg, render);
    } catch (e) { error.textContent = e.field ? `${e.field}: ${e.message}` : e.message; }
  } },
  h("input", { name: "username", placeholder: "User name or address", "aria-label": "User name", required: true }),
  h("input", { name: "password", type: "password", placeholder: "Password (10+ characters)", "aria-label": "Password", required: true }),
  h("select", { name: "role", "aria-label": "Role" }, ...["admin", "qmanager", "helpdesk", "audit", "quser"].map((r) => h("option", { value: r }, r))),
  h("button", { class: "primary", type: "submit" }, "Add user"));
  const secret = h("p", { class: "ok" });
  // A quarantine user's further addresses (aliases): their mail shows in the same quarantine.
  function aliases(u) {
    const path = `/api/users/${encodeURIComponent(u.username)}/addresses`;
    const change = async (method, address) => {
      try {
        await api(method, path, { address });
        viewUsers(arg, render);
      } catch (e) { error.textContent = e.message; }
    };
    const extra = (u.addresses || []).filter((a) => a !== u.username.toLowerCase());
    const input = h("input", { type: "email", placeholder: "alias@example.org", "aria-label": `New address for ${u.username}` });
    return h("div", { class: "aliases" },
      ...extra.map((a) => h("span", { class: "alias" }, a, " ",
        h("button", { "aria-label": `Remove ${a} from ${u.username}`, onclick: () => change("DELETE", a) }, "×"))),
      h("form", { class: "toolbar", onsubmit: (event) => { event.preventDefault(); change("POST", input.value.trim()); } },
        input, h("button", { type: "submit" }, "Add address")));
  }
  render(h("h1", {}, "Users"), form, error,
    h("table", {}, h("tbody", {}, users.items.map((u) => h("tr", {}, h("td", {}, u.username), h("td", {}, u.role), h("td", {}, u.totp ? "TOTP on" : ""),
      h("td", {}, u.role === "quser" ? aliases(u) : ""),
      h("td", {}, u.username !== state.user.username ? h("button", { class: "danger", onclick: async () => { await api("DELETE", `/api/users/${encodeURIComponent(u.username)}`); viewUsers(arg, render); } }, "Delete") : ""))))),
    h("h2", {}, "API tokens"),
    h("button", { onclick: async () => {
      const name = prompt("Token name");
      if (!name) return;
      const days = Number(prompt("Valid for how many days (1 to 365)?", "90"));
      if (!Number.isInteger(days)) return;
      try {
        const made = await api("POST", "/api/tokens", { name, role: "audit", expires_days: days });
        secret.textContent = `New token (shown once, valid ${made.expires_days} days): ${made.secret}`;
      } catch (e) { secret.textContent = e.message; }
    } }, "New read-only token"), secret,
    h("table", {}, h("tbody", {}, tokens.items.map((t) => h("tr", {}, h("td", {}, t.name), h("td", {}, t.role), h("td", {}, t.owner),
      h("td", {}, t.revoked ? "revoked" : t.expires * 1000 < Date.now() ? "expired" : `until ${new Date(t.expires * 1000).toLocaleDateString()}`))))));
}

async function copyText(text) {
  try { await navigator.clipboard.writeText(text); toast("Copied"); } catch { toast("Select the text and copy it"); }
}

// DKIM: make a key, publish its record, then sign with it (one revision of the dkim section).
async function viewDkim(arg, render) {
  const [keys, dkim, domains] = await Promise.all([api("GET", "/api/dkim/keys"), api("GET", "/api/settings/dkim"), api("GET", "/api/settings/domains")]);
  const out = h("div", { "aria-live": "polite" });
  const record = (item) => h("div", { class: "card" },
    h("p", {}, h("strong", {}, item.dns_name || `${item.selector}._domainkey.${item.domain}`), " TXT"),
    item.error ? h("p", { class: "errors" }, item.error) : [h("pre", { class: "record" }, item.txt), h("button", { onclick: () => copyText(item.txt) }, "Copy the record")]);
  const month = new Date().toISOString().slice(0, 7).replace("-", "");
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    out.replaceChildren(h("p", { class: "muted" }, "Generating…"));
    try {
      const made = await api("POST", "/api/dkim/keys", { domain: form.domain.value, selector: form.selector.value });
      const sign = h("button", { class: "primary", onclick: async () => {
        sign.disabled = true;
        try {
          const entry = { domain: made.domain, selector: made.selector, key: made.key };
          const result = await api("PATCH", "/api/state", { sections: { dkim: { ...dkim.dkim, sign: [...dkim.dkim.sign, entry] } },
            comment: `sign ${made.domain} with DKIM selector ${made.selector}` }, { ifMatch: dkim.revision });
          toast(`Signing with ${made.selector}._domainkey.${made.domain} (revision ${result.revision})`);
          viewDkim(arg, render);
        } catch (e) { sign.disabled = false; out.append(h("p", { class: "errors" }, e.message)); }
      } }, "Sign outbound mail with this key");
      out.replaceChildren(h("p", {}, "Publish this record in DNS, then start signing:"), record(made), sign);
    } catch (e) { out.replaceChildren(h("p", { class: "errors" }, e.field ? `${e.field}: ${e.message}` : e.message)); }
  } },
  h("h2", {}, "New key"),
  h("div", { class: "field" }, h("label", { for: "dkim-domain" }, "Domain"),
    h("select", { id: "dkim-domain", name: "domain" }, domains.domains.map((d) => h("option", { value: d.name }, d.name)))),
  h("div", { class: "field" }, h("label", { for: "dkim-selector" }, "Selector"), h("input", { id: "dkim-selector", name: "selector", value: `mw${month}`, required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}" }),
    h("div", { class: "help" }, "A new selector per key lets the old record stay published while mail signed with it is still in transit.")),
  h("p", {}, h("button", { type: "submit" }, "Generate a 2048-bit RSA key")));
  render(h("h1", {}, "DKIM"),
    h("p", {}, `Outbound mail is signed with ${dkim.dkim.sign.length || "no"} key${dkim.dkim.sign.length === 1 ? "" : "s"}; inbound signatures are ${dkim.dkim.verify ? "verified" : "not verified"}; DMARC: ${dkim.dkim.dmarc}.`),
    keys.items.map(record), state.user.role === "admin" ? [form, out] : "");
}

// My account: every role, quarantine users included, can turn on a second factor. Changing
// it asks for the password again (and a code of the current device while it is on): a
// session left open in a browser is not enough.
async function viewAccount(arg, render) {
  const me = await api("GET", "/api/session");
  const box = h("div");
  const password = () => h("input", { id: "totp-password", type: "password", autocomplete: "current-password", required: true });
  const currentCode = () => h("input", { id: "totp-current", inputmode: "numeric", autocomplete: "one-time-code", required: true, pattern: "[0-9]{6}" });
  async function start() {
    const enrol = await api("POST", "/api/session/totp", {});
    const code = h("input", { id: "totp-code", inputmode: "numeric", autocomplete: "one-time-code", required: true, pattern: "[0-9]{6}" });
    const pw = password();
    const current = me.totp ? currentCode() : null;
    const error = h("p", { class: "errors", role: "alert" });
    const form = h("form", { class: "card", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const body = { secret: enrol.secret, code: code.value, password: pw.value };
        if (current) body.current_code = current.value;
        await api("POST", "/api/session/totp", body);
        toast("Two-factor login is on");
        viewAccount(arg, render);
      } catch (e) { error.textContent = e.message; }
    } },
    h("p", {}, "Add this key to an authenticator app (type it in, or open the link on the phone):"),
    h("pre", { class: "record", id: "totp-secret" }, enrol.secret.match(/.{1,4}/g).join(" ")),
    h("p", {}, h("a", { href: enrol.uri }, "otpauth link"), " ", h("button", { type: "button", onclick: () => copyText(enrol.secret) }, "Copy the key")),
    h("div", { class: "field" }, h("label", { for: "totp-code" }, "Code the app shows now"), code),
    current ? h("div", { class: "field" }, h("label", { for: "totp-current" }, "Code of your current device"), current) : "",
    h("div", { class: "field" }, h("label", { for: "totp-password" }, "Your password"), pw),
    h("p", {}, h("button", { class: "primary", type: "submit" }, "Turn on")), error);
    box.replaceChildren(form);
    code.focus();
  }
  function stop() {
    const pw = password();
    const current = currentCode();
    const error = h("p", { class: "errors", role: "alert" });
    const form = h("form", { class: "card", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("DELETE", "/api/session/totp", { password: pw.value, code: current.value });
        toast("Two-factor login is off");
        viewAccount(arg, render);
      } catch (e) { error.textContent = e.message; }
    } },
    h("div", { class: "field" }, h("label", { for: "totp-current" }, "Code the app shows now"), current),
    h("div", { class: "field" }, h("label", { for: "totp-password" }, "Your password"), pw),
    h("p", {}, h("button", { class: "danger", type: "submit" }, "Turn two-factor login off")), error);
    box.replaceChildren(form);
    current.focus();
  }
  render(h("h1", {}, "My account"),
    h("p", {}, `${me.username} (${me.role})`),
    h("h2", {}, "Two-factor login (TOTP)"),
    me.totp
      ? h("p", {}, "On. ", h("button", { onclick: () => start() }, "Move to a new device"), " ", h("button", { class: "danger", onclick: () => stop() }, "Turn off"))
      : h("p", {}, "Off. ", h("button", { class: "primary", onclick: () => start() }, "Set up")),
    box);
}

async function viewSystem(arg, render) {
  const [services, versions, queue] = await Promise.all([api("GET", "/api/system/services"), api("GET", "/api/system/versions"), api("GET", "/api/system/queue").catch((e) => ({ items: [], error: e.message }))]);
  render(h("h1", {}, "System"),
    h("table", {}, h("tbody", {}, services.items.map((s) => h("tr", {}, h("td", {}, s.name), h("td", { class: s.healthy ? "ok" : "bad" }, s.healthy ? "running" : "down"),
      h("td", {}, s.processes.map((p) => `${p.pid} (${fmtBytes(p.rss)})`).join(", ")))))),
    h("h2", {}, "Versions"),
    h("p", {}, `Postfix ${versions.postfix || "?"}, ${versions.rspamd || "Rspamd ?"}, ${versions.clamav || "ClamAV ?"}; signatures ${versions.signature_age_hours ?? "?"} hours old`),
    h("h2", {}, `Mail queue (${queue.items.length})`),
    h("button", { onclick: async () => { await api("POST", "/api/system/queue", {}); toast("Queue flushed"); } }, "Flush"),
    h("table", {}, h("tbody", {}, queue.items.map((q) => h("tr", {}, h("td", {}, q.queue_id), h("td", {}, q.sender), h("td", {}, (q.recipients || []).map((r) => `${r.address} ${r.delay_reason || ""}`).join("; ")))))));
}

// --- router -------------------------------------------------------------------------------

const routes = {
  login: viewLogin, setup: viewSetup, dashboard: viewDashboard, quarantine: viewQuarantine, lists: viewLists, tracking: viewTracking,
  settings: viewSettings, rules: viewRules, dkim: viewDkim, account: viewAccount, history: viewHistory, users: viewUsers, system: viewSystem,
  learning: viewLearning,
};

let navigation = 0;

async function route() {
  const token = ++navigation;
  // A view still loading when the user moves on must not paint over the next one.
  const render = (...nodes) => { if (token === navigation) show(...nodes); };
  const [, name = "", arg] = location.hash.split("/");
  if (!state.user && name !== "setup") {
    // A fresh appliance opens the first-run wizard, whatever page was asked for.
    const setup = await api("GET", "/api/setup").catch(() => ({ needed: false }));
    if (token !== navigation) return;
    if (setup.needed) { location.hash = "#/setup"; return; }
  }
  if (!state.user && name !== "login" && name !== "setup") {
    try {
      const me = await api("GET", "/api/session");
      state.user = me;
      // Logged in by a digest's link (a cookie, no login form): the CSRF token comes here.
      if (me.csrf_token) { state.csrf = me.csrf_token; sessionStorage.setItem("mw_csrf", state.csrf); }
    } catch {
      location.hash = "#/login";
      return;
    }
  }
  updateShell();
  const view = routes[name] || (state.user && state.user.role === "quser" ? viewQuarantine : viewDashboard);
  try {
    await view(arg && decodeURIComponent(arg), render);
    document.getElementById("main").focus({ preventScroll: true });
    // For bench/controlplane.py: when each view was on screen, without the driver's overhead.
    if (token === navigation) performance.mark(`view:${name || "home"}`);
  } catch (e) {
    if (e.status !== 401) render(h("h1", {}, "Something went wrong"), h("p", { class: "errors" }, e.message));
  }
}

window.addEventListener("hashchange", route);
route();
