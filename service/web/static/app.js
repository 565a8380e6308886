// The dashboard: reads the operators' JSON API and renders every value as text
// (textContent, never innerHTML): step outputs are untrusted data.
"use strict";

const REDRIVABLE = ["failed", "partial", "cancelled"];
const CANCELLABLE = ["queued", "running", "waiting"];
const LIVE_MS = 3000;
const MAX_ITEM_ROWS = 100;
const MAX_OUTPUT_CHARS = 100000;

// -- helpers ------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { accept: "application/json", ...(options.body ? { "content-type": "application/json" } : {}) },
    credentials: "same-origin",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reason = body.detail || body.title || `HTTP ${response.status}`;
    throw new Error(`${response.status}: ${reason}`);
  }
  return body;
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function waitText(step) {
  // What a waiting step waits for, and when it looks again (a poll, the sleep's end, a timeout).
  const what =
    { poll: "an operation", callback: "a callback", sleep: "a sleep", flow: "its child executions" }[step.wait.kind] ||
    step.wait.kind;
  return `waits for ${what} · wakes ${when(step.wake_at)}`;
}

function seconds(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function executionLink(id) {
  return el("a", { href: `/ui/executions/${encodeURIComponent(id)}` }, id);
}

function replayOf(execution) {
  // A replay's original, and the page comparing the two.
  const compare = `/ui/compare/${encodeURIComponent(execution.replay_of)}/${encodeURIComponent(execution.execution_id)}`;
  return el("span", { class: "replay-of" }, executionLink(execution.replay_of), " · ", el("a", { href: compare }, "compare"));
}

function triggersOf(flow, only) {
  // A flow's event triggers (or the one named `only`): name, topic, and its `when` on hover.
  const shown = flow.triggers.filter((trigger) => !only || trigger.name === only);
  if (!shown.length) return only ? only : "—";
  const span = el("span", { class: "triggers" });
  shown.forEach((trigger, n) => {
    if (n) span.append(", ");
    span.append(el("span", { class: "trigger", title: trigger.when ? `when ${trigger.when}` : "every message" }, `${trigger.name} ← topic ${trigger.topic}`));
  });
  return span;
}

function parentOf(parent) {
  // A child execution's parent, and the step (and item) that started it.
  const item = parent.index === null || parent.index === undefined ? "" : `, item ${parent.index}`;
  const span = el("span", { class: "parent" }, executionLink(parent.execution_id));
  span.append(` (step ${parent.step}${item})`);
  return span;
}

// Ask before acting: `confirmBox` holds a question and Yes / No buttons.
function confirmThen(confirmBox, question, act) {
  confirmBox.querySelector("[id$=question]").textContent = question;
  confirmBox.hidden = false;
  const yes = confirmBox.querySelector("button.danger");
  const no = confirmBox.querySelector("button:not(.danger)");
  const close = () => {
    confirmBox.hidden = true;
    yes.onclick = no.onclick = null;
  };
  no.onclick = close;
  yes.onclick = async () => {
    close();
    await act();
  };
}

// -- the list of executions ----------------------------------------------------------

function executionsPage() {
  const form = document.getElementById("filters");
  const rows = document.querySelector("#executions tbody");
  const more = document.getElementById("more");
  const summary = document.getElementById("summary");
  const bulk = document.getElementById("bulk-redrive");
  let next = null;
  let timer = null;

  const params = new URLSearchParams(location.search);
  for (const box of form.querySelectorAll("input[name=status]")) {
    box.checked = params.getAll("status").includes(box.value);
  }
  form.flow.value = params.get("flow") || "";
  form.window.value = params.get("window") || "";

  function filters() {
    const query = new URLSearchParams();
    for (const box of form.querySelectorAll("input[name=status]:checked")) query.append("status", box.value);
    if (form.flow.value.trim()) query.set("flow", form.flow.value.trim());
    if (form.window.value) {
      const since = new Date(Date.now() - Number(form.window.value) * 1000);
      query.set("since", since.toISOString());
    }
    return query;
  }

  function remember() {
    const kept = new URLSearchParams();
    for (const box of form.querySelectorAll("input[name=status]:checked")) kept.append("status", box.value);
    if (form.flow.value.trim()) kept.set("flow", form.flow.value.trim());
    if (form.window.value) kept.set("window", form.window.value);
    history.replaceState(null, "", kept.toString() ? `?${kept}` : location.pathname);
  }

  function row(execution) {
    return el(
      "tr",
      { "data-id": execution.execution_id },
      el("td", {}, executionLink(execution.execution_id)),
      el("td", {}, execution.flow, execution.trigger ? el("span", { class: "muted" }, ` · trigger ${execution.trigger}`) : null),
      el("td", {}, badge(execution.status)),
      el("td", { class: "number" }, execution.run),
      el("td", {}, when(execution.requested_at)),
      el("td", { class: "number" }, seconds(execution.duration_ms)),
      el("td", { class: "error-cell", title: execution.error || "" }, execution.error || ""),
    );
  }

  async function load(append) {
    const query = filters();
    query.set("limit", "50");
    if (append && next) query.set("page_token", next);
    try {
      const page = await api(`/executions?${query}`);
      showError(null);
      if (!append) rows.replaceChildren();
      rows.append(...page.executions.map(row));
      next = page.next_page_token;
      more.hidden = !next;
      const shown = rows.children.length;
      summary.textContent = `${shown}${next ? "+" : ""} execution${shown === 1 ? "" : "s"}`;
      const statuses = query.getAll("status");
      bulk.hidden = !(statuses.length && statuses.every((s) => REDRIVABLE.includes(s)) && shown);
    } catch (error) {
      showError(error);
    }
  }

  function schedule() {
    clearInterval(timer);
    if (form.live.checked) timer = setInterval(() => next === null || rows.children.length <= 50 ? load(false) : null, LIVE_MS);
  }

  form.addEventListener("change", () => {
    remember();
    load(false);
    schedule();
  });
  form.addEventListener("submit", (event) => event.preventDefault());
  more.addEventListener("click", () => load(true));
  bulk.addEventListener("click", () => {
    const query = filters();
    const statuses = query.getAll("status");
    confirmThen(
      document.getElementById("bulk-confirm"),
      `Re-drive every ${statuses.join(" / ")} execution matching these filters (up to 1,000)?`,
      async () => {
        const body = { status: statuses, limit: 1000 };
        if (query.get("flow")) body.flow = query.get("flow");
        if (query.get("since")) body.since = query.get("since");
        try {
          const done = await api("/executions/redrive", { method: "POST", body: JSON.stringify(body) });
          summary.textContent = `${done.count} re-driven`;
          await load(false);
        } catch (error) {
          showError(error);
        }
      },
    );
  });
  load(false);
  schedule();
}

// -- one execution ---------------------------------------------------------------------

function criticalPath(flow, steps) {
  // Walk back from the step that finished last through the dependency that finished
  // last: the chain whose calls set the execution's duration.
  const byName = Object.fromEntries(flow.steps.map((step) => [step.name, step]));
  const timed = (name) => steps[name] && steps[name].started_at && steps[name].finished_at;
  const names = Object.keys(steps).filter(timed);
  if (!names.length) return new Set();
  const end = (name) => Date.parse(steps[name].finished_at);
  let current = names.reduce((a, b) => (end(b) > end(a) ? b : a));
  const path = new Set([current]);
  for (;;) {
    const before = (byName[current] ? byName[current].after : []).filter(timed);
    if (!before.length) return path;
    current = before.reduce((a, b) => (end(b) > end(a) ? b : a));
    path.add(current);
  }
}

function calls(step) {
  // Each call's span in ms: a for_each step's items, else the step itself.
  const span = (record) =>
    record.started_at && record.finished_at ? Date.parse(record.finished_at) - Date.parse(record.started_at) : 0;
  if (step.items) return step.items.map(span);
  return step.status === "skipped" ? [] : [span(step)];
}

function drawDag(flow, steps, critical) {
  const depth = {};
  const order = [];
  const visit = (name) => {
    if (depth[name] !== undefined) return depth[name];
    const step = flow.steps.find((s) => s.name === name);
    depth[name] = step.after.length ? 1 + Math.max(...step.after.map(visit)) : 0;
    return depth[name];
  };
  flow.steps.forEach((step) => visit(step.name));
  const columns = [];
  for (const step of flow.steps) (columns[depth[step.name]] ||= []).push(step.name), order.push(step.name);
  const longest = Math.max(...flow.steps.map((step) => step.name.length));
  const width = Math.max(170, 24 + longest * 7.6), height = 46, gapX = 60, gapY = 22;
  const position = {};
  columns.forEach((names, column) =>
    names.forEach((name, row) => (position[name] = { x: 10 + column * (width + gapX), y: 10 + row * (height + gapY) })),
  );
  const tallest = Math.max(...columns.map((names) => names.length));
  const canvas = svg("svg", {
    width: 20 + columns.length * (width + gapX) - gapX,
    height: 20 + tallest * (height + gapY) - gapY,
    role: "img",
    "aria-label": `the flow ${flow.name}`,
  });
  for (const step of flow.steps) {
    for (const dependency of step.after) {
      const from = position[dependency], to = position[step.name];
      const x1 = from.x + width, y1 = from.y + height / 2, x2 = to.x, y2 = to.y + height / 2;
      const hot = critical.has(step.name) && critical.has(dependency);
      canvas.append(
        svg("path", {
          d: `M${x1},${y1} C${x1 + gapX / 2},${y1} ${x2 - gapX / 2},${y2} ${x2},${y2}`,
          class: hot ? "edge critical" : "edge",
        }),
      );
    }
  }
  for (const name of order) {
    const { x, y } = position[name];
    const status = steps[name] ? steps[name].status : "pending";
    const group = svg("g", { class: `node ${status}${critical.has(name) ? " critical" : ""}`, "data-step": name });
    group.append(svg("rect", { x, y, width, height, rx: 6 }));
    const label = svg("text", { x: x + 10, y: y + 19 });
    label.textContent = name;
    const detail = svg("text", { x: x + 10, y: y + 36, class: "detail" });
    const step = flow.steps.find((s) => s.name === name);
    detail.textContent = `${status}${step.for_each ? " · for each" : ""}${step.when ? " · when" : ""}`;
    const waiting = status === "waiting" && steps[name].wait;
    const title = svg("title");
    title.textContent = [
      waiting && waitText(steps[name]),
      step.when && `when ${step.when}`,
      step.for_each && `for each of ${step.for_each}`,
    ]
      .filter(Boolean)
      .join("\n") || name;
    group.append(title, label, detail);
    canvas.append(group);
  }
  document.getElementById("dag").replaceChildren(canvas);
}

function drawTimeline(execution, flow, critical) {
  const box = document.getElementById("timeline");
  const start = Date.parse(execution.started_at);
  const ends = Object.values(execution.steps).map((s) => Date.parse(s.finished_at || execution.finished_at || Date.now()));
  const stop = Math.max(Date.parse(execution.finished_at || 0) || 0, ...ends, start + 1);
  const total = stop - start;
  const bar = (record, classes) => {
    const track = el("div", { class: "track" });
    if (record.started_at) {
      const from = Date.parse(record.started_at);
      const to = record.finished_at ? Date.parse(record.finished_at) : stop;
      const waits = record.status === "waiting" && record.wait ? ` · ${waitText(record)}` : "";
      const piece = el("div", { class: `bar ${record.status} ${classes}`, title: `${seconds(to - from)}${waits}` });
      piece.style.left = `${((from - start) / total) * 100}%`;
      piece.style.width = `${Math.max(((to - from) / total) * 100, 0.4)}%`;
      track.append(piece);
    }
    return track;
  };
  const rows = [];
  for (const step of flow.steps) {
    const result = execution.steps[step.name];
    if (!result) {
      rows.push(el("div", { class: "row" }, el("span", { class: "label" }, step.name), el("div", { class: "track" })));
      continue;
    }
    const hot = critical.has(step.name);
    rows.push(
      el(
        "div",
        { class: `row${hot ? " critical" : ""}`, "data-step": step.name },
        el("span", { class: "label", title: `${step.name}: ${result.status}` }, step.name),
        bar(result, hot && !result.items ? "critical" : ""),
      ),
    );
    if (result.items) {
      const last = result.items.reduce(
        (best, item, index) =>
          item.finished_at && (best < 0 || item.finished_at > result.items[best].finished_at) ? index : best,
        -1,
      );
      result.items.slice(0, MAX_ITEM_ROWS).forEach((item, index) => {
        const itemHot = hot && index === last;
        rows.push(
          el(
            "div",
            { class: `row item${itemHot ? " critical" : ""}` },
            el("span", { class: "label" }, `[${index}]`),
            bar(item, itemHot ? "critical" : ""),
          ),
        );
      });
      if (result.items.length > MAX_ITEM_ROWS) {
        rows.push(el("div", { class: "row item muted" }, `… and ${result.items.length - MAX_ITEM_ROWS} more items`));
      }
    }
  }
  box.replaceChildren(...rows);
  const spent = Object.values(execution.steps).flatMap(calls).reduce((a, b) => a + b, 0);
  const speedup = document.getElementById("speedup");
  if (execution.duration_ms && spent) {
    speedup.textContent =
      `The calls took ${seconds(spent)} one after another; this execution took ` +
      `${seconds(execution.duration_ms)}: ${(spent / execution.duration_ms).toFixed(1)}× faster.`;
  } else {
    speedup.textContent = "";
  }
}

function shownJson(value) {
  const text = value === null || value === undefined ? "" : JSON.stringify(value, null, 2);
  return text.length > MAX_OUTPUT_CHARS ? `${text.slice(0, MAX_OUTPUT_CHARS)}\n… (${text.length} characters)` : text;
}

// A flow with `result:` shows what it made (and delivered); the steps stay below it.
function drawResult(flow, execution) {
  document.getElementById("result-section").hidden = flow.result === null;
  document.getElementById("result").textContent =
    execution.result === null ? "none: made when the execution succeeds or is partial" : shownJson(execution.result);
}

function children(step) {
  // A flow step's child executions: its child, or its items' children counted by status
  // and each linked.
  if (step.child) return el("p", { class: "children" }, "child execution ", executionLink(step.child));
  const started = (step.items || []).filter((item) => item.child);
  if (!started.length) return null;
  const counts = {};
  for (const item of step.items) counts[item.status] = (counts[item.status] || 0) + 1;
  const summary = Object.entries(counts).map(([status, count]) => `${count} ${status}`).join(", ");
  const links = started.flatMap((item, n) => [n ? " " : "", executionLink(item.child)]);
  return el("div", { class: "children" }, el("p", {}, `child executions: ${summary}`), el("p", { class: "muted" }, ...links));
}

function drawSteps(execution) {
  const blocks = Object.entries(execution.steps).map(([name, step]) => {
    const shown = shownJson(step.output);
    const facts = el(
      "p",
      { class: "muted" },
      `${step.attempts} attempt${step.attempts === 1 ? "" : "s"} · ${seconds(step.duration_ms)} · ${when(step.started_at)}`,
    );
    return el(
      "details",
      { class: "step", "data-step": name, open: step.status === "failed" ? "" : null },
      el("summary", {}, name, " ", badge(step.status)),
      facts,
      step.status === "waiting" && step.wait ? el("p", { class: "wait" }, waitText(step)) : null,
      step.error ? el("p", { class: "error" }, step.error) : null,
      children(step),
      step.variant ? el("p", { class: "muted" }, `variant ${step.variant}`) : null,
      shown ? el("pre", { class: "json output" }, shown) : null,
      shadowsOfStep(name, step),
    );
  });
  document.getElementById("steps").replaceChildren(...blocks);
}

function executionPage() {
  const id = document.getElementById("execution-id").dataset.executionId;
  const path = `/executions/${encodeURIComponent(id)}`;
  const cancel = document.getElementById("cancel");
  const redrive = document.getElementById("redrive");
  const notice = document.getElementById("notice");
  let flow = null;
  let timer = null;
  let agreementDrawn = false;

  async function load() {
    try {
      const execution = await api(path);
      flow ||= await api(`/flows/${encodeURIComponent(execution.flow)}`);
      showError(null);
      const facts = [
        ["Status", badge(execution.status)],
        ["Flow", execution.flow],
        ["Run", execution.run],
        ["Requested", when(execution.requested_at)],
        ["Started", when(execution.started_at)],
        ["Finished", when(execution.finished_at)],
        ["Duration", seconds(execution.duration_ms)],
        ["Wakes", execution.status === "waiting" ? when(execution.wake_at) : "—"],
        ["Flow version", execution.flow_version || "—"],
        ["Parent", execution.parent ? parentOf(execution.parent) : "—"],
        ["Replay of", execution.replay_of ? replayOf(execution) : "—"],
        ["Trigger", execution.trigger ? triggersOf(flow, execution.trigger) : "—"],
        ["Flow's triggers", triggersOf(flow, null)],
        ["Error", execution.error || "—"],
      ];
      document.getElementById("facts").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
      const critical = criticalPath(flow, execution.steps);
      drawDag(flow, execution.steps, critical);
      drawTimeline(execution, flow, critical);
      drawResult(flow, execution);
      drawSteps(execution);
      if (!agreementDrawn) {
        agreementDrawn = true;
        drawAgreement(execution.flow).catch(showError);
      }
      document.getElementById("input").textContent = JSON.stringify(execution.input, null, 2);
      cancel.hidden = !CANCELLABLE.includes(execution.status);
      redrive.hidden = !REDRIVABLE.includes(execution.status);
      const ended = !CANCELLABLE.includes(execution.status);
      if (ended) clearInterval(timer);
      else if (!timer) timer = setInterval(load, LIVE_MS / 3);
    } catch (error) {
      showError(error);
    }
  }

  const act = (verb, question) => () =>
    confirmThen(document.getElementById("confirm"), question, async () => {
      try {
        const done = await api(`${path}/${verb}`, { method: "POST" });
        if (verb === "replay") {
          notice.replaceChildren("replay queued: ", executionLink(done.execution_id));
          return;
        }
        notice.textContent = verb === "redrive" ? `run ${done.run} queued` : `${done.status}`;
        clearInterval(timer);
        timer = setInterval(load, LIVE_MS / 3);
        await load();
      } catch (error) {
        showError(error);
      }
    });
  cancel.addEventListener("click", act("cancel", "Cancel this execution? Calls in flight are abandoned."));
  redrive.addEventListener("click", act("redrive", "Re-drive this execution? Succeeded steps are kept."));
  document
    .getElementById("replay")
    .addEventListener("click", act("replay", "Replay this execution on today's flow? A new execution runs; no webhook."));
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "executions") executionsPage();
  if (page === "execution") executionPage();
  if (page === "compare") comparePage();
});
