// The Writ console: approvals inbox (signed in this browser), intents, stats, plane.
import { authHeader, forgetKey, importKey, loadKey, signedDecision } from "./keys.js";
import { follow } from "./live.js";
import { badge, barChart, countdown, el, facts, prettyArguments, prettyValue, table, waterfall } from "./render.js";

const POLL_MS = 2000; // only while a live stream is down
const $ = (id) => document.getElementById(id);
let held = null; // { approverId, key } once imported
const pending = new Map(); // intent_id -> card state

// -- tabs -------------------------------------------------------------------------------------------

function show(tab) {
  for (const b of document.querySelectorAll("nav button")) b.setAttribute("aria-pressed", String(b.dataset.tab === tab));
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== tab;
  if (tab === "stats") loadStats();
  if (tab === "plane") followPlane(); else stopPlane();
  if (tab === "intents" && !$("intent-table").tBodies[0].rows.length) searchIntents();
  tailIntents();
}
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.tab));

// -- views API (bearer token, kept for this tab's session, never in a URL) -------------------------

const token = () => sessionStorage.getItem("writ-views-token") || "";

async function views(path) {
  if (!token()) throw new Error("enter a views token (writ views token create NAME) first");
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, cache: "no-store", credentials: "omit" });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${body.error || res.status}: ${body.message || res.statusText}`);
  return body;
}

$("token-save").addEventListener("click", () => {
  sessionStorage.setItem("writ-views-token", $("views-token").value.trim());
  $("views-token").value = "";
  $("token-scope").textContent = "token set for this tab";
  searchIntents();
});
$("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem("writ-views-token");
  $("token-scope").textContent = "no token";
});
if (token()) $("token-scope").textContent = "token set for this tab";

// -- approvals inbox ---------------------------------------------------------------------------------

async function approvals(method, path, body) {
  const headers = { Authorization: await authHeader(held, method, path) };
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body && JSON.stringify(body), cache: "no-store", credentials: "omit" });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(`${data.error || res.status}: ${data.message || res.statusText}`), { code: data.error });
  return data;
}

function keyUi() {
  $("key-missing").hidden = !!held;
  $("key-present").hidden = !held;
  $("key-who").textContent = held ? held.approverId : "";
}

$("key-import").addEventListener("click", async () => {
  $("key-error").textContent = "";
  const file = $("key-file").files[0];
  if (!file) { $("key-error").textContent = "choose your key file"; return; }
  try {
    held = await importKey($("approver-id").value.trim(), await file.text());
    $("key-file").value = "";
    keyUi();
    followInbox();
  } catch (err) {
    $("key-error").textContent = `could not import the key: ${err.message}`;
  }
});
$("key-forget").addEventListener("click", async () => {
  await forgetKey();
  held = null;
  inboxStream?.stop();
  inboxStream = null;
  pending.clear();
  $("inbox").replaceChildren();
  keyUi();
});

function quorumText(req) {
  const by = req.granted_by || [];
  return `${by.length} of ${req.quorum}${by.length ? " · granted by " + by.join(", ") : ""}`;
}

function card(req) {
  const outcome = el("p", { class: "outcome", role: "status", "aria-live": "polite" });
  const comment = el("textarea", { "aria-label": "Comment (signed with the decision)", placeholder: "comment (signed with your decision)" });
  const remaining = el("span", { class: "countdown expires" });
  const deadline = el("span", { class: "countdown deadline" });
  const history = el("div", { class: "history" });
  const decide = async (decision, buttons) => {
    buttons.forEach((b) => (b.disabled = true));
    outcome.className = "outcome";
    outcome.textContent = "signing…";
    try {
      const body = await signedDecision(held, req, decision, comment.value);
      const done = await approvals("POST", `/approvals/${req.intent_id}/decision`, body);
      outcome.className = "outcome ok";
      outcome.textContent = `${done.outcome} (${done.granted_by.length}/${done.quorum}: ${done.granted_by.join(", ") || "—"}) · ${done.reason}`;
    } catch (err) {
      outcome.className = "outcome error";
      outcome.textContent = `refused: ${err.message}`;
      buttons.forEach((b) => (b.disabled = false));
    }
  };
  const approve = el("button", { type: "button", class: "approve" }, "Approve");
  const deny = el("button", { type: "button", class: "deny" }, "Deny");
  approve.addEventListener("click", () => decide("grant", [approve, deny]));
  deny.addEventListener("click", () => decide("deny", [approve, deny]));
  const node = el("li", { class: "card", "data-intent": req.intent_id },
    el("h3", {}, `${req.tool} · agent ${req.agent_id}`),
    facts([
      ["intent", el("code", {}, req.intent_id)],
      ["agent", req.agent_id],
      ["on behalf of", req.on_behalf_of || "—"],
      ["agent owner", req.owner || "—"],
      ["tool", req.tool],
      ["tool digest (pinned version)", el("code", {}, req.tool_digest)],
      ["annotations", Object.keys(req.annotations || {}).length ? el("code", {}, JSON.stringify(req.annotations)) : "—"],
      ["policy", `${(req.policy_ids || []).join(", ") || "—"}`],
      ["policy digest", el("code", {}, req.policy_digest)],
      ["approver group", req.approvers],
      ["quorum", el("span", { class: "quorum" }, quorumText(req))],
      ["approval expires", [req.expires_at, " · ", remaining]],
      ["call deadline", [req.deadline || "—", " · ", deadline]],
      ["args digest", el("code", {}, req.args_digest)],
      ["approval digest (you sign this)", el("code", { class: "digest" }, req.approval_digest)],
    ]),
    el("h4", {}, "Arguments"),
    prettyArguments(req.arguments),
    history,
    el("div", { class: "decide" }, comment, approve, " ", deny),
    outcome);
  const tick = () => {
    remaining.textContent = countdown(req.expires_at);
    deadline.textContent = req.deadline ? countdown(req.deadline) : "";
  };
  tick();
  loadHistory(req, history);
  return { node, tick, req };
}

async function loadHistory(req, into) {
  // What earlier calls of this agent to this tool ended as (needs a views token).
  if (!token()) return;
  try {
    const q = new URLSearchParams({ agent: req.agent_id, tool: req.tool, limit: "6" });
    const page = await views(`/intents?${q}`);
    const earlier = page.intents.filter((r) => r.intent_id !== req.intent_id).slice(0, 5);
    into.replaceChildren(el("h4", {}, "Earlier calls of this agent to this tool"),
      earlier.length ? el("ul", {}, earlier.map((r) => el("li", {}, r.submitted_at, " ", badge(r.status), " ", r.code || ""))) : el("p", { class: "muted" }, "none"));
  } catch { /* the inbox works without a views token */ }
}

function renderInbox(rows, how) {
  const seen = new Set(rows.map((r) => r.intent_id));
  for (const [id, c] of pending) {
    if (!seen.has(id) && !c.node.querySelector(".outcome").textContent) { c.node.remove(); pending.delete(id); }
  }
  for (const r of rows) {
    const known = pending.get(r.intent_id);
    if (known && known.req.approval_digest === r.approval_digest) {
      // The same request, maybe with more grants: update the card in place. A new card would drop
      // what this one holds (a comment being typed, the outcome of a decision made here, which the
      // push of its own grant may beat).
      known.node.querySelector(".quorum").textContent = quorumText(r);
      known.req = { ...known.req, granted_by: r.granted_by };
      continue;
    }
    const c = card(r);
    if (known) known.node.replaceWith(c.node); else $("inbox").prepend(c.node);
    pending.set(r.intent_id, c);
  }
  $("inbox-status").textContent = `${rows.length} pending · ${how} · updated ${new Date().toLocaleTimeString()}`;
}

async function pollInbox() {
  if (!held || inboxLive) return;
  try {
    const { approvals: rows } = await approvals("GET", "/approvals");
    renderInbox(rows, "polling");
  } catch (err) {
    $("inbox-status").textContent = `could not read the inbox: ${err.message}`;
  }
}

// The inbox is pushed by the server (Server-Sent Events); while that stream is down, it is polled.
let inboxStream = null;
let inboxLive = false;
function followInbox() {
  inboxStream?.stop();
  if (!held) return;
  inboxStream = follow("/approvals/stream", {
    headers: async () => ({ Authorization: await authHeader(held, "GET", "/approvals/stream") }),
    onEvent: (name, data) => {
      if (name === "approvals") renderInbox(data.approvals, "live");
      else if (name === "error") $("inbox-status").textContent = `could not read the inbox: ${data.error}: ${data.message}`;
    },
    onState: (state, err) => {
      inboxLive = state === "live";
      if (!inboxLive) $("inbox-status").textContent = `live updates down (${err ? err.message : "closed"}); polling`;
    },
  });
}

setInterval(pollInbox, POLL_MS);
setInterval(() => pending.forEach((c) => c.tick()), 1000);

// -- intents ------------------------------------------------------------------------------------------

let nextCursor = null;

function filterQuery(cursor) {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($("filters"))) if (String(v).trim()) q.set(k, String(v).trim());
  q.set("limit", "50");
  if (cursor) q.set("cursor", cursor);
  return q;
}

async function loadIntents(append) {
  $("intents-error").textContent = "";
  try {
    showIntents(await views(`/intents?${filterQuery(append ? nextCursor : null)}`), append);
  } catch (err) {
    $("intents-error").textContent = err.message;
  }
}

async function searchIntents(append = false) {
  await loadIntents(append);
  if (!append) tailIntents(); // the tail follows the new filters
}

function showIntents(page, append) {
    const body = $("intent-table").tBodies[0];
    if (!append) body.replaceChildren();
    for (const r of page.intents) {
      const row = el("tr", { class: "clickable", tabindex: "0", "data-intent": r.intent_id },
        el("td", {}, r.submitted_at), el("td", { class: "mono" }, r.intent_id), el("td", {}, r.agent_id), el("td", {}, r.tool || "—"),
        el("td", {}, badge(r.status)), el("td", {}, r.code || ""), el("td", {}, r.total_ms == null ? "—" : r.total_ms.toFixed(1)));
      const open = () => openIntent(r.intent_id);
      row.addEventListener("click", open);
      row.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
      body.append(row);
    }
    nextCursor = page.next_cursor;
    $("next-page").hidden = !nextCursor;
}

$("filters").addEventListener("submit", (e) => { e.preventDefault(); searchIntents(); });
$("next-page").addEventListener("click", () => searchIntents(true));

// The live tail: the first page of the filters, pushed at every change (Server-Sent Events, with
// the same token and the same withholding as the list); polled while the stream is down.
let tailStream = null;
let tailLive = false;
function tailIntents() {
  tailStream?.stop();
  tailStream = null;
  tailLive = false;
  $("tail-status").textContent = "";
  if (!$("tail").checked || $("intents").hidden || !token()) return;
  tailStream = follow(`/intents/stream?${filterQuery(null)}`, {
    headers: async () => ({ Authorization: `Bearer ${token()}` }),
    onEvent: (name, data) => {
      if (name === "intents") { showIntents(data, false); $("tail-status").textContent = `live · updated ${new Date().toLocaleTimeString()}`; }
      else if (name === "error") $("intents-error").textContent = `${data.error}: ${data.message}`;
    },
    onState: (state, err) => {
      tailLive = state === "live";
      if (!tailLive) $("tail-status").textContent = `live tail down (${err ? err.message : "closed"}); polling`;
    },
  });
}
$("tail").addEventListener("change", tailIntents);
setInterval(() => { if ($("tail").checked && !$("intents").hidden && !tailLive) loadIntents(false); }, POLL_MS);

function check(ok, label) {
  if (ok === null || ok === undefined) return el("span", { class: "muted" }, `${label}: not checkable`);
  return el("span", { class: ok ? "ok" : "error" }, `${ok ? "✓" : "✗"} ${label}`);
}

async function openIntent(id) {
  const box = $("intent-detail");
  box.hidden = false;
  box.replaceChildren(el("p", {}, "loading…"));
  try {
    const d = await views(`/intents/${encodeURIComponent(id)}`);
    const i = d.intent;
    const parts = [
      el("h3", {}, `Intent ${i.intent_id} `, badge(i.status)),
      d.withheld.length ? el("p", { class: "muted withheld-note" }, `summary token: ${d.withheld.join(", ")} withheld`) : null,
      facts([["agent", i.agent_id], ["on behalf of", i.on_behalf_of || "—"], ["tool", i.tool || "—"], ["tool digest", i.tool_digest || "—"],
        ["stage", i.stage || "—"], ["code", i.code || "—"], ["reason", i.reason || "—"], ["attempts", `${i.attempts} (retries ${i.retries})`],
        ["submitted", i.submitted_at], ["ended", i.ended_at || "—"]]),
      waterfall(i),
      el("h4", {}, "Decisions"),
      d.decisions.length ? table(["at", "decision", "deciding policies", "code", "reason"], d.decisions.map((x) => [x.decided_at, badge(x.kind), (x.policy_ids || []).join(", ") || "—", x.code || "", x.reason || ""])) : el("p", { class: "muted" }, "none"),
      el("h4", {}, "Approval"),
      d.approval ? [facts([["group", d.approval.approver_group], ["quorum", String(d.approval.quorum)], ["granted by", (d.approval.granted_by || []).join(", ") || "—"], ["status", d.approval.status], ["expires", d.approval.expires_at]]),
        table(["at", "approver", "decision", "code", "reason"], (d.approval.decisions || []).map((x) => [x.at, x.approver_id, badge(x.decision), x.code || "", x.reason || ""]))] : el("p", { class: "muted" }, "none"),
      el("h4", {}, "Attempts"),
      d.executions.length ? table(["attempt", "started", "ended", "outcome", "ms"], d.executions.map((x) => [String(x.attempt), x.started_at, x.ended_at || "—", badge(x.outcome), x.duration_ms == null ? "—" : String(x.duration_ms)])) : el("p", { class: "muted" }, "none"),
      el("h4", {}, "Receipt"),
      d.receipt ? [
        facts([["position", String(d.receipt.position)], ["receipt hash", el("code", {}, d.receipt.receipt_hash)], ["previous hash", el("code", {}, d.receipt.prev_hash)],
          ["signature", el("code", {}, d.receipt.signature)], ["ledger key", d.receipt.ledger_key_id], ["approvers", (d.receipt.approvers || []).join(", ") || "—"]]),
        d.verification ? el("p", { class: "verification" }, check(d.verification.hash_ok, "hash"), " · ", check(d.verification.signature_ok, "ledger signature"), " · ",
          check(d.verification.chain_ok, `chain link to #${d.verification.prev_position ?? "genesis"}`), d.verification.problem ? el("span", { class: "error" }, ` ${d.verification.problem}`) : null) : null,
      ] : el("p", { class: "muted" }, "no receipt yet"),
      el("h4", {}, "Events"),
      table(["seq", "event", "at", "payload"], d.events.map((e) => [String(e.seq), e.type, e.occurred_at, prettyValue(e.payload)])),
    ];
    box.replaceChildren(...parts.flat().filter(Boolean));
    box.scrollIntoView({ block: "start" });
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, err.message));
  }
}

// -- stats ----------------------------------------------------------------------------------------------

async function loadStats() {
  $("stats-error").textContent = "";
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($("stats-form"))) if (String(v).trim()) q.set(k, String(v).trim());
  try {
    const s = await views(`/stats?${q}`);
    $("stats-charts").replaceChildren(
      barChart(`Outcomes per ${s.by}`, s.rows, [{ key: "calls", label: "calls" }, { key: "succeeded", label: "succeeded" }, { key: "denials", label: "denials" }, { key: "failures", label: "failures" }]),
      barChart(`Latency per ${s.by} (ms)`, s.rows, [{ key: "p50_ms", label: "p50" }, { key: "p95_ms", label: "p95" }, { key: "p99_ms", label: "p99" }], { unit: " ms" }));
    const cols = ["key", "calls", "succeeded", "denials", "failures", "rejections", "expirations", "p50_ms", "p95_ms", "p99_ms"];
    $("stats-table").tHead.replaceChildren(el("tr", {}, cols.map((c) => el("th", {}, c))));
    $("stats-table").tBodies[0].replaceChildren(...s.rows.map((r) => el("tr", {}, cols.map((c) => el("td", {}, r[c] == null ? "—" : String(r[c]))))));
  } catch (err) {
    $("stats-error").textContent = err.message;
  }
}
$("stats-form").addEventListener("submit", (e) => { e.preventDefault(); loadStats(); });

// -- plane (an operator token: a views token of scope operator, kept apart from the analyst's) ---------

const operatorToken = () => sessionStorage.getItem("writ-operator-token") || "";
let planeStream = null;

$("operator-save").addEventListener("click", () => {
  sessionStorage.setItem("writ-operator-token", $("operator-token").value.trim());
  $("operator-token").value = "";
  followPlane();
});
$("operator-forget").addEventListener("click", () => {
  sessionStorage.removeItem("writ-operator-token");
  stopPlane();
  $("plane-body").hidden = true;
  $("plane-status").textContent = "no operator token";
});

function stopPlane() {
  planeStream?.stop();
  planeStream = null;
}

function followPlane() {
  stopPlane();
  $("plane-error").textContent = "";
  if (!operatorToken()) {
    $("plane-status").textContent = "enter an operator token (writ views token create NAME --scope operator)";
    $("plane-body").hidden = true;
    return;
  }
  planeStream = follow("/plane/stream", {
    headers: async () => ({ Authorization: `Bearer ${operatorToken()}` }),
    onEvent: (name, data) => {
      if (name === "plane") { showPlane(data); $("plane-error").textContent = ""; }
      else if (name === "error") $("plane-error").textContent = `${data.error}: ${data.message}`;
    },
    onState: (state, err) => {
      if (state === "live") { $("plane-status").textContent = "live"; return; }
      $("plane-status").textContent = "live updates down";
      if (err && (err.status === 401 || err.status === 403)) { $("plane-body").hidden = true; }
      $("plane-error").textContent = err ? `refused: ${err.message}` : "";
    },
  });
}

const dash = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));
const problem = (part) => (part && part.problem ? el("p", { class: "error" }, `could not read: ${part.problem}`) : null);

function showPlane(p) {
  $("plane-body").hidden = false;
  $("plane-status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  $("plane-supervisor").textContent = p.supervisor.note || `supervised by writ up (pid ${p.supervisor.pid}, since ${p.supervisor.started_at})`;
  $("plane-processes").tBodies[0].replaceChildren(...p.processes.map((u) => el("tr", { "data-unit": u.name },
    el("th", { scope: "row" }, u.name), el("td", { class: "state" }, badge(u.state)), el("td", { class: "pid" }, dash(u.pid)),
    el("td", { class: "restarts" }, String(u.restarts)), el("td", {}, dash(u.last_exit)), el("td", {}, dash(u.running_since)))));
  const consumers = Array.isArray(p.consumers) ? p.consumers : [];
  $("plane-consumers").tBodies[0].replaceChildren(...consumers.map((c) => el("tr", {},
    el("th", { scope: "row" }, c.service), el("td", {}, dash(c.node)), el("td", {}, dash(c.pending)), el("td", {}, dash(c.ack_pending)), el("td", {}, dash(c.redelivered)), el("td", {}, dash(c.problem)))));
  $("plane-consumers-problem").replaceChildren(problem(p.consumers) || "");
  const dl = p.dead_letters || {};
  $("plane-dlq").replaceChildren(...(dl.problem ? [problem(dl)] : [
    el("p", {}, `${dl.total} parked`, Object.keys(dl.per_service || {}).length ? ` (${Object.entries(dl.per_service).map(([k, v]) => `${k}: ${v}`).join(", ")})` : ""),
    dl.latest.length ? table(["at", "service", "code", "reason", "subject"], dl.latest.map((d) => [dash(d.at), d.service, d.code, d.reason, d.subject])) : el("p", { class: "muted" }, "none"),
  ]));
  const breakers = Array.isArray(p.breakers) ? p.breakers : [];
  $("plane-breakers").replaceChildren(problem(p.breakers) || (breakers.length
    ? table(["server", "state", "since", "failures", "reason"], breakers.map((b) => [b.server, badge(b.state), b.since, String(b.consecutive_failures), b.reason]))
    : el("p", { class: "muted" }, "every breaker closed (none has tripped)")));
  const loops = Array.isArray(p.loop_changes) ? p.loop_changes : [];
  $("plane-loops").replaceChildren(problem(p.loop_changes) || (loops.length
    ? table(["at", "loop", "of", "step", "limit", "reason"], loops.map((c) => [c.at, c.loop, c.of, c.step, c.from === c.to ? String(c.to) : `${c.from} → ${c.to}`, c.reason]))
    : el("p", { class: "muted" }, "no limit changed in the last hour")));
  $("plane-quarantine").replaceChildren(...(p.quarantined.length ? p.quarantined.map((q) => el("article", { class: "card", "data-tool": q.tool },
    el("h4", {}, q.tool), facts([["pending version", el("code", {}, q.pending_digest)], ["accepted version", q.accepted_digest ? el("code", {}, q.accepted_digest) : "none (a new tool)"], ["to accept", el("code", {}, q.accept)]]),
    el("pre", { class: "diff", tabindex: "0", "aria-label": `definition diff of ${q.tool}` }, q.diff))) : [el("p", { class: "muted" }, "no tool waits in quarantine")]));
  const rl = p.rate_limits || {};
  $("plane-rates").replaceChildren(rl.problem ? el("p", { class: "muted" }, rl.problem) : (rl.windows.length
    ? table(["permit", "agent", "tool", "calls in window", "oldest call (s ago)", "window empties in (s)"], rl.windows.map((w) => [w.permit, w.agent, w.tool, String(w.calls), dash(w.oldest_s), dash(w.empties_in_s)]))
    : el("p", { class: "muted" }, "no open rate-limit window")));
  $("plane-views").tBodies[0].replaceChildren(...p.views_lag.map((r) => el("tr", {},
    el("th", { scope: "row" }, r.stream), ...[r.position, r.head, r.events_behind, r.seconds_behind.toFixed(1)].map((c) => el("td", {}, String(c))))));
}

// -- start -------------------------------------------------------------------------------------------------

held = await loadKey();
keyUi();
followInbox();
