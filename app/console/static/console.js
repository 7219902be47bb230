// Switchboard review console. Plain JavaScript, no build step; it talks to /auth (through session.js, the login
// both console pages share) and /review/v1 only. Every text is shown with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  queue: new Map(), // escalation id -> queue item (from the stream)
  generation: 0, // bumped per stream connection, to drop items closed while disconnected
  source: null,
  reconnectTimer: null,
  selected: null, // escalation id
  escalation: null, // the selected escalation, as GET /review/v1/escalations/{id}
  conversation: null,
  revealedDraft: null, // raw draft text once revealed
  live: false, // the stream has sent the current queue: later escalations are new
};

// --- the login (session.js) -------------------------------------------------------------------------------

const api = Session.api;
const showLogin = Session.showLogin;

// --- views ----------------------------------------------------------------------------------------------

// What the page drops when the login form comes back (Session.showLogin calls it).
function reset() {
  clearTimeout(state.reconnectTimer);
  if (state.source) state.source.close();
  Object.assign(state, { me: null, source: null, selected: null, escalation: null });
  state.queue.clear();
}

async function showApp() {
  state.me = await api("/auth/me");
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("who").textContent = `${state.me.email} · ${state.me.tenant} · ${state.me.role}`;
  document.body.dataset.role = state.me.role;
  const viewer = state.me.role === "viewer";
  for (const el of document.querySelectorAll(".agent-only")) el.hidden = viewer;
  $("viewer-note").hidden = !viewer;
  renderQueue();
  connect();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("escalation"); // the webhook's console_url
  if (wanted) select(wanted);
}

const canDecide = () => state.me && state.me.role !== "viewer";

function announce(text) {
  $("announcer").textContent = text;
}

function setStatus(text, isError = false) {
  const el = $("action-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// --- the live queue ---------------------------------------------------------------------------------------

async function connect() {
  clearTimeout(state.reconnectTimer);
  if (state.source) state.source.close();
  setLive("connecting", "Connecting…");
  let ticket;
  try {
    ticket = (await api("/review/v1/events/tickets", { method: "POST" })).ticket;
  } catch (err) {
    if (err.status === 401) return; // showLogin already ran
    setLive("offline", "Offline: retrying");
    state.reconnectTimer = setTimeout(connect, 3000);
    return;
  }
  const generation = ++state.generation;
  const source = new EventSource(`/review/v1/events?ticket=${encodeURIComponent(ticket)}`);
  state.source = source;
  source.addEventListener("escalation", (e) => {
    const item = JSON.parse(e.data);
    const isNew = !state.queue.has(item.id);
    item.generation = generation;
    item.fresh = isNew && state.live;
    state.queue.set(item.id, item);
    if (item.fresh) announce(`New escalation: ${item.reason} on ${item.channel}`);
    renderQueue();
    if (item.id === state.selected) refreshSelected();
  });
  source.addEventListener("closed", (e) => {
    const { id } = JSON.parse(e.data);
    state.queue.delete(id);
    renderQueue();
    if (id === state.selected) refreshSelected();
  });
  source.addEventListener("ready", () => {
    for (const [id, item] of state.queue) if (item.generation !== generation) state.queue.delete(id);
    state.live = true;
    setLive("live", "Live");
    renderQueue();
  });
  source.onerror = () => {
    // The server ends each stream after a few minutes and tickets expire: reconnect with a new ticket.
    source.close();
    if (state.source !== source) return;
    state.live = false;
    setLive("offline", "Reconnecting…");
    state.reconnectTimer = setTimeout(connect, 1000);
  };
}

function setLive(kind, text) {
  const el = $("live");
  el.dataset.state = kind;
  el.textContent = text;
}

function ageSeconds(iso) {
  return Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
}

function formatAge(iso) {
  const s = ageSeconds(iso);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

const AGE_FILTERS = {
  lt15m: (s) => s < 900,
  "15m-1h": (s) => s >= 900 && s < 3600,
  gt1h: (s) => s >= 3600,
  gt1d: (s) => s >= 86400,
};

function slaLabel(item) {
  return item.sla_state || "-";
}

function matches(item) {
  const reason = $("filter-reason").value;
  const channel = $("filter-channel").value;
  const age = $("filter-age").value;
  const sla = $("filter-sla").value;
  return (!reason || item.reason === reason)
    && (!channel || item.channel === channel)
    && (!age || AGE_FILTERS[age](ageSeconds(item.created_at)))
    && (!sla || slaLabel(item) === sla);
}

function syncOptions(select, values) {
  const have = new Set([...select.options].map((o) => o.value));
  for (const value of [...values].sort()) {
    if (!have.has(value)) select.add(new Option(value, value));
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function renderQueue() {
  const items = [...state.queue.values()];
  syncOptions($("filter-reason"), new Set(items.map((i) => i.reason)));
  syncOptions($("filter-channel"), new Set(items.map((i) => i.channel)));
  syncOptions($("filter-sla"), new Set(items.map(slaLabel)));
  const shown = items.filter(matches).sort((a, b) => a.created_at.localeCompare(b.created_at));
  $("queue-count").textContent = String(shown.length);
  $("queue-count").setAttribute("aria-label", `${shown.length} shown of ${items.length} open`);
  const list = $("queue-list");
  list.replaceChildren(...shown.map((item) => {
    const button = el("button", { type: "button", "aria-current": String(item.id === state.selected),
      dataset: { id: item.id } },
    el("span", { class: "meta" },
      el("span", { class: "badge reason" }, item.reason),
      el("span", { class: "badge" }, item.channel),
      item.tenant_mode && item.tenant_mode !== "auto" ? el("span", { class: "badge mode", dataset: { mode: item.tenant_mode } }, `mode ${item.tenant_mode}`) : null,
      el("span", {}, formatAge(item.created_at)),
      el("span", { class: item.sla_state === "breached" ? "sla breached" : "sla" }, `SLA ${slaLabel(item)}`),
      item.mode === "human" ? el("span", { class: "badge human" }, `taken over by ${item.assigned_agent || "an agent"}`) : null,
      item.fresh ? el("span", { class: "badge new" }, "new") : null),
    el("span", { class: "text" }, item.customer_text));
    button.addEventListener("click", () => select(item.id));
    return el("li", { class: "queue-item", dataset: { id: item.id } }, button);
  }));
  $("queue-empty").hidden = shown.length > 0;
  $("queue-empty").textContent = items.length && !shown.length
    ? "No escalation matches these filters." : "Nothing waiting. New escalations appear here by themselves.";
}

// --- one escalation ---------------------------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  state.revealedDraft = null;
  const item = state.queue.get(id);
  if (item) item.fresh = false;
  renderQueue();
  hideForms();
  setStatus("");
  await refreshSelected();
  $("detail").scrollTop = 0;
  $("detail").focus({ preventScroll: true });
}

async function refreshSelected() {
  const id = state.selected;
  if (!id) return;
  try {
    const escalation = await api(`/review/v1/escalations/${encodeURIComponent(id)}`);
    const conversation = await api(`/review/v1/conversations/${encodeURIComponent(escalation.conversation_id)}`);
    if (state.selected !== id) return;
    state.escalation = escalation;
    state.conversation = conversation;
    renderDetail();
  } catch (err) {
    setStatus(err.message, true);
  }
}

// Split `text` into text nodes and <mark class="unsupported"> around each of `sentences` found in it.
function highlight(text, sentences) {
  const fragment = document.createDocumentFragment();
  const wanted = (sentences || []).map((s) => s.trim()).filter(Boolean);
  let rest = text || "";
  while (rest) {
    let best = null;
    for (const sentence of wanted) {
      const at = rest.indexOf(sentence);
      if (at >= 0 && (best === null || at < best.at)) best = { at, sentence };
    }
    if (best === null) {
      fragment.append(document.createTextNode(rest));
      break;
    }
    if (best.at > 0) fragment.append(document.createTextNode(rest.slice(0, best.at)));
    fragment.append(el("mark", { class: "unsupported", title: "Not supported by the cited passage" }, best.sentence));
    rest = rest.slice(best.at + best.sentence.length);
  }
  return fragment;
}

function renderDetail() {
  const e = state.escalation;
  const c = state.conversation;
  $("detail-placeholder").hidden = true;
  $("detail-body").hidden = false;
  $("detail-title").textContent = `Escalation: ${e.reason}`;
  $("d-reason").textContent = e.reason;
  $("d-channel").textContent = c.channel;
  $("d-age").textContent = formatAge(e.created_at);
  $("d-sla").textContent = e.sla_state || "-";
  $("d-status").textContent = e.status + (e.reviewer ? ` (${e.reviewer})` : "");
  $("d-mode").textContent = c.mode === "human" ? `taken over by ${c.assigned_agent || "an agent"}` : "bot answering";
  $("d-tenant-mode").textContent = c.tenant_mode || "auto";
  $("d-detail").textContent = e.detail || "";

  $("history").replaceChildren(...c.messages.map((m) => {
    const body = el("div", { class: "body" }, m.text);
    const li = el("li", { class: `${m.direction}${m.id === e.message_id ? " escalated" : ""}`, dataset: { id: m.id } },
      el("div", { class: "who" },
        el("span", {}, m.direction === "in" ? "Customer" : (m.author || "bot")),
        el("time", { dateTime: m.created_at }, new Date(m.created_at).toLocaleString())),
      body);
    if (m.masked && canDecide()) {
      const reveal = el("button", { type: "button", class: "link reveal" }, "Reveal");
      reveal.addEventListener("click", async () => {
        try {
          const raw = await api(`/review/v1/messages/${encodeURIComponent(m.id)}/reveal`, { method: "POST" });
          body.textContent = raw.text;
          reveal.remove();
          announce("Revealed; the reveal is recorded in the audit log.");
        } catch (err) { setStatus(err.message, true); }
      });
      li.append(reveal);
    }
    return li;
  }));

  const passages = e.passages || [];
  $("passages-none").hidden = passages.length > 0;
  $("passages").replaceChildren(...passages.map((p) => {
    const score = Number(p.score);
    return el("li", {},
      el("div", { class: "head" },
        el("span", {}, p.heading ? `${p.document} › ${p.heading}` : p.document),
        el("span", { class: "score", title: "Similarity to the question (cosine)" }, score.toFixed(2))),
      el("div", { class: "bar", "aria-hidden": "true" }, el("span")),
      el("div", { class: "text" }, p.text || ""));
  }));
  // Inline styles are blocked by the page's policy: size the bars through CSSOM instead.
  for (const [i, p] of passages.entries()) {
    const bar = $("passages").children[i].querySelector(".bar span");
    bar.style.width = `${Math.round(Math.max(0, Math.min(1, Number(p.score))) * 100)}%`;
  }

  const draftText = state.revealedDraft ?? e.draft;
  $("draft").hidden = !draftText;
  $("draft-none").hidden = Boolean(draftText);
  $("draft").replaceChildren(highlight(draftText || "", e.unsupported));
  $("unsupported-note").hidden = !(e.unsupported && e.unsupported.length);
  $("reveal-escalation").hidden = !(e.masked && canDecide() && state.revealedDraft === null);

  const open = e.status === "open";
  $("approve").hidden = !open || !e.draft;
  $("edit").hidden = !open;
  $("reject").hidden = !open;
  $("takeover").hidden = !open || c.mode === "human";
  $("release").hidden = c.mode !== "human";
  $("agent-form").hidden = c.mode !== "human";
  $("actions").hidden = !canDecide();
}

function hideForms() {
  for (const id of ["edit-form", "reject-form"]) $(id).hidden = true;
}

async function act(label, work) {
  const buttons = [...document.querySelectorAll("#actions button")];
  buttons.forEach((b) => { b.disabled = true; });
  setStatus(`${label}…`);
  try {
    await work();
    setStatus(`${label}: done.`);
    announce(`${label}: done.`);
    hideForms();
    await refreshSelected();
  } catch (err) {
    setStatus(`${label} failed: ${err.message}`, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

const decide = (decision, extra = {}) => api(
  `/review/v1/escalations/${encodeURIComponent(state.selected)}/decision`,
  { method: "POST", body: { decision, ...extra } });

async function revealEscalation() {
  const raw = await api(`/review/v1/escalations/${encodeURIComponent(state.selected)}/reveal`, { method: "POST" });
  state.revealedDraft = raw.draft;
  const message = state.conversation.messages.find((m) => m.id === state.escalation.message_id);
  if (message) { message.text = raw.customer_text; message.masked = false; }
  renderDetail();
  announce("Revealed; the reveal is recorded in the audit log.");
}

function wire() {
  $("filters").addEventListener("change", renderQueue);
  $("reveal-escalation").addEventListener("click", () => revealEscalation().catch((err) => setStatus(err.message, true)));
  $("approve").addEventListener("click", () => act("Approve", () => decide("approve")));
  $("edit").addEventListener("click", async () => {
    hideForms();
    try {
      // The reply goes out as written: start from the raw draft, never from placeholders like [EMAIL].
      if (state.escalation.masked && state.revealedDraft === null) await revealEscalation();
    } catch (err) { setStatus(err.message, true); return; }
    $("edit-text").value = state.revealedDraft ?? state.escalation.draft ?? "";
    $("edit-form").hidden = false;
    $("edit-text").focus();
  });
  $("edit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("edit-text").value.trim();
    if (!text) { setStatus("Write the reply first.", true); return; }
    act("Edit and send", () => decide("edit", { text }));
  });
  $("reject").addEventListener("click", () => {
    hideForms();
    $("reject-form").hidden = false;
    $("reject-reason").focus();
  });
  $("reject-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const note = $("reject-reason").value.trim();
    if (!note) { setStatus("Say why you reject it.", true); return; }
    act("Reject", () => decide("reject", { note }));
  });
  $("takeover").addEventListener("click", () => act("Take over", () => decide("takeover")));
  $("release").addEventListener("click", () => act("Release", () => api(
    `/review/v1/conversations/${encodeURIComponent(state.escalation.conversation_id)}/release`, { method: "POST" })));
  $("agent-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("agent-text").value.trim();
    if (!text) return;
    act("Send", async () => {
      await api(`/review/v1/conversations/${encodeURIComponent(state.escalation.conversation_id)}/messages`,
        { method: "POST", body: { text, client_message_id: crypto.randomUUID() } });
      $("agent-text").value = "";
    });
  });
  for (const cancel of document.querySelectorAll("#actions .cancel")) cancel.addEventListener("click", hideForms);
  setInterval(() => { if (state.me) renderQueue(); }, 30000); // ages move on
}

function start() {
  wire();
  Session.start({ showApp, reset });
}

window.SwitchboardConsole = { highlight, state };
document.addEventListener("DOMContentLoaded", start);
