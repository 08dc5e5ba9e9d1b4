"use strict";
// Reviewer inbox. Talks only to this origin: /inbox/api/me and the LangGraph API.
// Every value from the server is put in the page with textContent, never as HTML.
(() => {
  // 2 s to an hour: a timer longer than 2^31-1 ms (or infinite) fires at once, again and again.
  const REFRESH_S = Math.min(3600, Math.max(2, Number(new URLSearchParams(location.search).get("refresh")) || 5));
  const TOKEN_KEY = "payables-inbox-token";
  const IDENTITY_ARGS = ["invoice_id", "vendor_id"]; // an edit may not change these
  const ROLE_FOR_RESUME = { reviewer: "approver", controller: "controller", admin: "approver", clerk: "clerk" };
  const $ = (id) => document.getElementById(id);
  let me = null;
  let timer = null;
  let busy = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function show(id, text) {
    const node = $(id);
    node.textContent = text || "";
    node.hidden = !text;
  }
  const showError = (text) => show("error", text);
  const showNotice = (text) => show("notice", text);

  function text(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (Array.isArray(value)) return value.map(text).join("; ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // Accounts arrive masked from the server; mask again here so a miss can never show one.
  function masked(key, value) {
    if (typeof value !== "string" || !/account|iban/i.test(key) || value.startsWith("****")) return text(value);
    return "****" + value.replace(/[\s-]/g, "").slice(-4);
  }

  async function api(path, options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    let response;
    try {
      response = await fetch(path, {
        ...options,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      });
    } catch (err) {
      throw new Error(`Cannot reach the server (${err.message}). Check that it is running.`);
    }
    const body = await response.text();
    let data = null;
    try { data = body ? JSON.parse(body) : null; } catch (_) { data = body; }
    if (!response.ok) {
      const detail = data && typeof data === "object" ? (data.detail || data.message || JSON.stringify(data)) : data;
      const what = { 401: "Not signed in or token rejected", 403: "Forbidden for your role", 404: "Not found", 409: "Conflict" }[response.status] || "Request failed";
      const error = new Error(`${what} (HTTP ${response.status}): ${text(detail)}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function table(rows, columns) {
    const head = el("tr", {}, ...columns.map((c) => el("th", { text: c })));
    const body = rows.map((row) => el("tr", {}, ...columns.map((c) => {
      const value = row[c];
      return el("td", { class: typeof value === "number" || /^-?\d+(\.\d+)?$/.test(String(value)) ? "num" : "", text: masked(c, value) });
    })));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  }

  function keyValues(object) {
    return table(Object.entries(object).map(([field, value]) => ({ field, value: masked(field, value) })), ["field", "value"]);
  }

  function chips(items, cls) {
    return el("div", {}, ...items.map((item) => el("span", { class: cls, text: text(item) })));
  }

  function rowsTable(rows) {
    const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
    return table(rows, columns);
  }

  function evidenceSection(evidence) {
    const parts = [];
    if (evidence.reasoning) parts.push(el("h3", { text: "Agent's reasoning" }), el("p", { class: "reasoning", text: evidence.reasoning }));
    if (evidence.invoice) parts.push(el("h3", { text: "Invoice" }), keyValues(evidence.invoice));
    if (Array.isArray(evidence.match_table) && evidence.match_table.length) parts.push(el("h3", { text: "Invoice vs PO vs receipt" }), rowsTable(evidence.match_table));
    if (evidence.verdict) parts.push(el("p", {}, "Match verdict: ", el("strong", { class: "verdict", text: evidence.verdict }), ` · matched total ${text(evidence.matched_total)}`));
    if (Array.isArray(evidence.exceptions) && evidence.exceptions.length) parts.push(el("h3", { text: "Variances and exceptions" }), rowsTable(evidence.exceptions));
    if (Array.isArray(evidence.notices) && evidence.notices.length) parts.push(el("h3", { text: "Notices" }), el("ul", {}, ...evidence.notices.map((n) => el("li", { text: text(n) }))));
    if (Array.isArray(evidence.flags) && evidence.flags.length) parts.push(el("h3", { text: "Flags" }), chips(evidence.flags, "flag"));
    if (Array.isArray(evidence.guard_flags) && evidence.guard_flags.length) parts.push(el("h3", { class: "guard-flags", text: "Guard flags (suspicious content in the documents)" }), rowsTable(evidence.guard_flags));
    if (Array.isArray(evidence.taint) && evidence.taint.length) parts.push(el("h3", { class: "taint", text: "Taint (arguments that came from untrusted input)" }), rowsTable(evidence.taint));
    if (evidence.vendor) parts.push(el("h3", { text: "Vendor" }), keyValues(evidence.vendor));
    if (evidence.proposed_account) parts.push(el("p", {}, "Proposed account: ", el("strong", { text: masked("account", evidence.proposed_account) })));
    return parts;
  }

  function decisionControls(index, action, allowed) {
    const name = `decision-${index}`;
    const radio = (value, label) => el("label", {}, el("input", { type: "radio", name, value, ...(value === "approve" ? { checked: "" } : {}) }), ` ${label}`);
    const editable = Object.entries(action.args).filter(([key]) => !IDENTITY_ARGS.includes(key));
    const edit = el("div", { class: "edit-fields", hidden: "" }, ...editable.map(([key, value]) =>
      el("label", {}, `${key} `, el("input", { "data-arg": key, value: value === null || value === undefined ? "" : String(value) }))));
    const reason = el("textarea", { class: "reason", placeholder: "Reason (required to reject, optional otherwise)" });
    const box = el("fieldset", { class: "decision", "data-index": String(index) },
      el("legend", { text: `Decision on ${action.name}` }),
      ...[["approve", "Approve"], ["edit", "Edit"], ["reject", "Reject"]]
        .filter(([value]) => allowed.includes(value)).map(([value, label]) => radio(value, label)),
      allowed.includes("edit") ? edit : null, reason);
    box.addEventListener("change", () => {
      edit.hidden = box.querySelector("input[type=radio]:checked").value !== "edit";
    });
    return box;
  }

  function readDecision(box, action) {
    const type = box.querySelector("input[type=radio]:checked").value;
    const reason = box.querySelector(".reason").value.trim();
    if (type === "reject") {
      if (!reason) throw new Error(`Give a reason to reject ${action.name}.`);
      return { type, message: reason };
    }
    if (type === "edit") {
      const args = { ...action.args };
      for (const input of box.querySelectorAll("[data-arg]")) args[input.dataset.arg] = input.value.trim() === "" ? null : input.value.trim();
      return { type, edited_action: { name: action.name, args }, ...(reason ? { message: reason } : {}) };
    }
    return { type, ...(reason ? { message: reason } : {}) };
  }

  function card(thread, interrupt) {
    const request = interrupt.value;
    const node = el("article", { class: "approval", "data-thread": thread.thread_id, "data-interrupt": interrupt.id });
    node.append(
      el("h2", { text: request.request || "(no request text)" }),
      el("p", { class: "meta", text: `Thread ${thread.thread_id} · requested by ${request.requester} · interrupt ${interrupt.id}` }));
    if (request.error) node.append(el("p", { class: "previous-error", text: `Last answer refused: ${request.error}` }));
    request.action_requests.forEach((action, index) => {
      const step = (request.steps || [])[index] || {};
      const evidence = (request.evidence || [])[index] || {};
      node.append(
        el("h3", { text: `Action ${index + 1}: ${action.name}` }),
        el("p", {}, "Amount: ", el("span", { class: "amount", text: `${text(action.args.amount)} ${action.args.currency || ""}`.trim() })),
        el("p", { text: action.description }),
        keyValues(action.args),
        el("p", { class: "meta", text: `Tier ${text(step.tier)} · needs ${text(step.min_approvers)} approver(s)${step.required_role ? `, one a ${step.required_role}` : ""} · approved so far by ${(step.approved_by || []).map((a) => `${a.id} (${a.role})`).join(", ") || "nobody"}` }),
        step.reasons && step.reasons.length ? el("ul", {}, ...step.reasons.map((r) => el("li", { text: r }))) : null,
        ...evidenceSection(evidence),
        decisionControls(index, action, ((request.review_configs || [])[index] || {}).allowed_decisions || ["approve", "reject"]));
    });
    const send = el("button", { type: "button", class: "send", text: "Send decision" });
    send.addEventListener("click", () => decide(thread, interrupt, node, send));
    node.append(send);
    node.dataset.signature = JSON.stringify(interrupt);
    return node;
  }

  async function decide(thread, interrupt, node, button) {
    showError("");
    showNotice("");
    let decisions;
    try {
      decisions = interrupt.value.action_requests.map((action, index) =>
        readDecision(node.querySelector(`fieldset[data-index="${index}"]`), action));
    } catch (err) {
      showError(err.message);
      return;
    }
    const resume = { decisions, reviewer: { id: me.identity, role: ROLE_FOR_RESUME[me.role] || "approver" } };
    button.disabled = true;
    busy = true;
    try {
      const result = await api(`/threads/${encodeURIComponent(thread.thread_id)}/runs/wait`, {
        method: "POST",
        body: JSON.stringify({
          assistant_id: (thread.metadata && thread.metadata.graph_id) || "payables",
          command: { resume: { [interrupt.id]: resume } },
        }),
      });
      if (result && result.__error__) throw new Error(`The run failed: ${text(result.__error__.message || result.__error__)}`);
      const next = result && result.__interrupt__ && result.__interrupt__[0];
      if (next && next.value && next.value.error) showError(`Decision refused: ${next.value.error}`);
      else if (next && !counted(interrupt, next)) showError(`Decision not recorded on thread ${thread.thread_id}: the approval changed before it arrived (another reviewer answered it). It is shown again as it is now; decide again.`);
      else if (next) showNotice(`Decision recorded on thread ${thread.thread_id}; it waits for another approval.`);
      else if (!decidedByMe(interrupt, result)) showError(`Decision not recorded on thread ${thread.thread_id}: another reviewer answered this approval first, and the thread is ${text(result && result.status)}.`);
      else showNotice(`Decision recorded; thread ${thread.thread_id} is ${text(result && result.status)}.`);
    } catch (err) {
      showError(err.message);
    } finally {
      busy = false;
      button.disabled = false;
      await refresh();
    }
  }

  // Whether an answer to `answered` was counted, judged by the interrupt the run paused at
  // next. LangGraph drops a resume for an interrupt that is no longer pending (another
  // reviewer answered first) without an error and pauses at the pending one again: the
  // same steps, without this reviewer's signature. A counted approval or edit of the same
  // steps carries it; other steps mean the run moved on.
  function counted(answered, next) {
    const ids = (value) => ((value && value.steps) || []).map((s) => s.step_id).join(",");
    if (ids(next.value) !== ids(answered.value)) return true;
    return ((next.value && next.value.steps) || []).some((s) => (s.approved_by || []).some((a) => a.id === me.identity));
  }

  // Whether a run that ended without a new interrupt holds this reviewer's decision on the
  // answered steps. A resume queued behind another reviewer's answer finds the run already
  // finished: LangGraph runs nothing and answers with the final state, without an error.
  // The run's answer holds the channels it wrote; its `result` lists every decision.
  function decidedByMe(answered, result) {
    const steps = new Set(((answered.value && answered.value.steps) || []).map((s) => s.step_id));
    const decisions = (result && result.result && result.result.decisions) || [];
    return decisions.some((d) => d.reviewer_id === me.identity && steps.has(d.step_id));
  }

  async function pendingInterrupts(thread) {
    let state;
    try {
      state = await api(`/threads/${encodeURIComponent(thread.thread_id)}/state`);
    } catch (err) {
      // Waiting in the run index but unknown to this server (a `payables run` thread) or
      // gone since the list was read: nothing here to answer.
      if (err.status === 404) return [];
      throw err;
    }
    return (state.interrupts || []).filter((i) => i.value && Array.isArray(i.value.action_requests));
  }

  // Every thread whose approval waits, as the agent's run index says, that the token may
  // see. The server's thread status is no guide: `payables resume` answers without it.
  async function interruptedThreads() {
    const found = await api("/inbox/api/pending");
    return (found.threads || []).map((id) => ({ thread_id: id, metadata: { graph_id: "payables" } }));
  }

  async function refresh() {
    if (!me || busy) return;
    try {
      const threads = await interruptedThreads();
      const wanted = [];
      for (const thread of threads) for (const interrupt of await pendingInterrupts(thread)) wanted.push([thread, interrupt]);
      const list = $("approvals");
      const existing = new Map([...list.children].map((node) => [node.dataset.interrupt, node]));
      const cards = wanted.map(([thread, interrupt]) => {
        const old = existing.get(interrupt.id);
        // Keep a card the reviewer may be filling in, unless what it shows has changed.
        return old && old.dataset.signature === JSON.stringify(interrupt) ? old : card(thread, interrupt);
      });
      list.replaceChildren(...cards);
      $("count").textContent = String(cards.length);
      $("empty").hidden = cards.length > 0;
      $("refreshed").textContent = new Date().toLocaleTimeString();
      if ($("error").dataset.fromRefresh) { showError(""); delete $("error").dataset.fromRefresh; }
    } catch (err) {
      showError(`Could not refresh the inbox: ${err.message}`);
      $("error").dataset.fromRefresh = "1";
      if (err.status === 401) signOut(`Signed out: ${err.message}`);
    }
  }

  async function signIn(token) {
    showError("");
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      me = await api("/inbox/api/me");
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      me = null;
      showError(`Sign-in failed: ${err.message}`);
      return;
    }
    $("identity").textContent = me.identity;
    $("role").textContent = text(me.role);
    $("tenant").textContent = text(me.tenant);
    $("who").hidden = false;
    $("sign-in").hidden = true;
    $("inbox").hidden = false;
    $("interval").textContent = String(REFRESH_S);
    if (me.role === "clerk") showNotice("Clerks see their own requests here; a reviewer or controller decides them.");
    await refresh();
    timer = setInterval(refresh, REFRESH_S * 1000);
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    if (timer) clearInterval(timer);
    timer = null;
    $("approvals").replaceChildren();
    $("who").hidden = true;
    $("inbox").hidden = true;
    $("sign-in").hidden = false;
    showNotice("");
    if (message) showError(message);
  }

  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("refresh").addEventListener("click", () => refresh());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
})();
