// Switchboard analytics page. Plain JavaScript, no build step; it talks to /auth (through session.js, the login
// it shares with the review console, so a person coming from the console is already logged in) and
// /admin/v1/analytics only, and draws its charts itself (charts.js). Every text is shown with textContent, never
// parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { me: null, report: null };
const COLORS = { answered: "#2e7d32", escalated: "#c77700", human: "#6a4fb3", other: "#8a94a3" };
const MODEL_COLORS = ["#1f5fbf", "#c2185b", "#00838f", "#8d6e63", "#5e35b1", "#7cb342"];

const showLogin = Session.showLogin;

// What the page drops when the login form comes back (Session.showLogin calls it).
function reset() {
  Object.assign(state, { me: null, report: null });
}

async function showApp() {
  state.me = await Session.api("/auth/me");
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("who").textContent = `${state.me.email} · ${state.me.tenant} · ${state.me.role}`;
  const today = new Date().toISOString().slice(0, 10);
  const from = new Date(Date.now() - 29 * 86400e3).toISOString().slice(0, 10);
  const wanted = new URLSearchParams(location.hash.slice(1));
  $("since").value = wanted.get("since") || from;
  $("until").value = wanted.get("until") || today;
  await load();
}

// --- figures ----------------------------------------------------------------------------------------------

const count = (n) => (Number.isInteger(n) ? n.toLocaleString("en") : n.toFixed(1));
const percent = (f) => (f === null || f === undefined ? "–" : `${(f * 100).toFixed(1)}%`);
const money = (v) => (v === 0 ? "$0" : `$${v < 0.01 ? v.toPrecision(2) : v.toFixed(2)}`);

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function query() {
  return new URLSearchParams({ since: $("since").value, until: $("until").value }).toString();
}

async function load() {
  const error = $("range-error");
  try {
    state.report = await Session.api(`/admin/v1/analytics?${query()}`);
  } catch (err) {
    if (err.status === 401) return showLogin("Your session ended: log in again.");
    error.textContent = err.message;
    error.hidden = false;
    return;
  }
  error.hidden = true;
  history.replaceState(null, "", `#${query()}`);
  render(state.report);
  document.body.dataset.loaded = `${state.report.since}/${state.report.until}`;
}

function tile(label, value, id) {
  const box = document.createElement("div");
  box.className = "tile";
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.id = `tile-${id}`;
  box.append(dt, dd);
  return box;
}

function render(report) {
  const t = report.total;
  $("tiles").replaceChildren(
    tile("Conversations started", count(t.conversations_started), "conversations"),
    tile("Messages in / out", `${count(t.messages_in)} / ${count(t.messages_out)}`, "messages"),
    tile("Messages answered by the bot", percent(t.deflection), "deflection"),
    tile("Conversations the bot handled alone", percent(t.conversation_deflection), "conversation-deflection"),
    tile("Escalations", count(t.escalations), "escalations"),
    tile("Bot first response", duration(t.bot_first_response.avg_s), "bot-first"),
    tile("Human first response", duration(t.human_first_response.avg_s), "human-first"),
    tile("Agent handling", duration(t.agent_handling.avg_s), "handling"),
    tile("LLM cost", money(t.llm_cost), "cost"),
  );
  const labels = report.days.map((d) => d.day);
  const outcome = (d, s) => d.inbound_by_status[s] || 0;
  Charts.stackedBars($("chart-outcomes"), {
    labels, format: count, label: "Inbound messages per day by outcome",
    series: [
      { name: "answered by the bot", color: COLORS.answered, values: report.days.map((d) => outcome(d, "answered")) },
      { name: "escalated", color: COLORS.escalated, values: report.days.map((d) => outcome(d, "escalated")) },
      { name: "routed to an agent", color: COLORS.human, values: report.days.map((d) => outcome(d, "human")) },
      { name: "other (dead, merged, waiting)", color: COLORS.other, values: report.days.map(
        (d) => d.messages_in - outcome(d, "answered") - outcome(d, "escalated") - outcome(d, "human")) },
    ],
  });
  Charts.line($("chart-deflection"), {
    labels, values: report.days.map((d) => d.deflection), max: 1, format: percent, label: "Deflection per day",
  });
  Charts.hbars($("chart-reasons"), {
    items: Object.entries(t.escalations_by_reason).map(([label, value]) => ({ label, value })), format: count,
    label: "Escalations by reason",
  });
  const models = t.llm_by_model.map((m) => `${m.provider}/${m.model}`);
  Charts.stackedBars($("chart-cost"), {
    labels, format: money, label: "LLM cost per day by model",
    series: models.map((name, i) => ({
      name, color: MODEL_COLORS[i % MODEL_COLORS.length],
      values: report.days.map((d) => {
        const u = d.llm_by_model.find((m) => `${m.provider}/${m.model}` === name);
        return u && u.cost ? u.cost : 0;
      }),
    })),
  });
  const times = [
    ["Bot first response (from the message to the bot's reply)", t.bot_first_response],
    ["Bot resolution (answered messages)", t.bot_resolution],
    ["Human first response (escalations, to the first agent message)", t.human_first_response],
    ["Human resolution (escalations, to the decision or release)", t.human_resolution],
    ["Agent handling (takeover to release)", t.agent_handling],
  ];
  $("times").tBodies[0].replaceChildren(...times.map(([name, d]) => row([name, count(d.count), duration(d.avg_s),
    duration(d.max_s)])));
  $("models").tBodies[0].replaceChildren(...t.llm_by_model.map((m) => row([m.provider, m.model, count(m.calls),
    count(m.failed), count(m.prompt_tokens), count(m.completion_tokens), m.cost === null ? "–" : money(m.cost)])));
}

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i > 0 && /^[\d$–.,]/.test(String(text))) td.className = "num";
    tr.appendChild(td);
  });
  return tr;
}

async function download() {
  const error = $("range-error");
  try {
    const response = await Session.request(`/admin/v1/analytics/export.csv?${query()}`);
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `analytics-${$("since").value}-${$("until").value}.csv`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    error.hidden = true;
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  }
}

// --- wiring -----------------------------------------------------------------------------------------------

$("range").addEventListener("submit", (event) => { event.preventDefault(); load(); });
$("download").addEventListener("click", download);
Session.start({ showApp, reset });
