// Model rollouts on the dashboard: a step's shadow beside its answer (the differences
// marked), a flow's agreement per step, and two executions compared. Uses app.js's
// helpers; every value goes in as text.
"use strict";

const MAX_JSON_LINES = 2000;
const SHOWN_ITEMS = 3; // a for_each's items whose shadows are drawn (disagreeing ones first)

// Pretty JSON whose lines at or under one of `pointers` (RFC 6901) are marked.
function markedJson(value, pointers) {
  const marks = new Set(pointers);
  const pre = el("pre", { class: "json marked" });
  let lines = 0;
  const marked = (pointer) => {
    // The pointer itself, or one of its ancestors ("" is the whole value).
    if (marks.has("") || marks.has(pointer)) return true;
    for (let at = pointer.indexOf("/", 1); at > 0; at = pointer.indexOf("/", at + 1)) {
      if (marks.has(pointer.slice(0, at))) return true;
    }
    return false;
  };
  const line = (text, pointer, depth) => {
    lines += 1;
    if (lines > MAX_JSON_LINES) return;
    const differs = marked(pointer);
    pre.append(el("span", { class: differs ? "line differs" : "line" }, `${"  ".repeat(depth)}${text}\n`));
  };
  const escape = (key) => String(key).replaceAll("~", "~0").replaceAll("/", "~1");
  const walk = (node, pointer, depth, prefix, comma) => {
    if (node !== null && typeof node === "object") {
      const list = Array.isArray(node);
      const entries = list ? node.map((child, index) => [index, child]) : Object.entries(node);
      const [open, close] = list ? ["[", "]"] : ["{", "}"];
      if (!entries.length) return line(`${prefix}${open}${close}${comma}`, pointer, depth);
      line(`${prefix}${open}`, pointer, depth);
      entries.forEach(([key, child], n) => {
        const label = list ? "" : `${JSON.stringify(key)}: `;
        walk(child, `${pointer}/${escape(key)}`, depth + 1, label, n < entries.length - 1 ? "," : "");
      });
      return line(`${close}${comma}`, pointer, depth);
    }
    return line(`${prefix}${JSON.stringify(node)}${comma}`, pointer, depth);
  };
  walk(value === undefined ? null : value, "", 0, "", "");
  if (lines > MAX_JSON_LINES) pre.append(el("span", { class: "line muted" }, `… (${lines} lines)\n`));
  return pre;
}

function sideBySide(left, right, pointers, names) {
  return el(
    "div",
    { class: "sides" },
    el("div", {}, el("h4", {}, names[0]), markedJson(left, pointers)),
    el("div", {}, el("h4", {}, names[1]), markedJson(right, pointers)),
  );
}

function verdict(shadow) {
  if (shadow.status !== "succeeded") return el("span", { class: "badge failed" }, "candidate failed");
  if (shadow.agree === true) return el("span", { class: "badge succeeded" }, "agrees");
  if (shadow.agree === false) return el("span", { class: "badge partial" }, "disagrees");
  return el("span", { class: "badge skipped" }, "no verdict");
}

function shadowOf(name, primaryOutput, primaryMs, shadow) {
  return el(
    "div",
    { class: "shadow", "data-shadow": name },
    el("p", {}, "shadow ", verdict(shadow), ` · primary ${seconds(primaryMs)} · candidate ${seconds(shadow.duration_ms)}`),
    shadow.error ? el("p", { class: "error" }, shadow.error) : null,
    shadow.differences.length ? el("p", { class: "muted" }, `differs at ${shadow.differences.join(", ")}`) : null,
    shadow.status === "succeeded" ? sideBySide(primaryOutput, shadow.output, shadow.differences, ["primary", "candidate"]) : null,
  );
}

// A step's shadows: its own, or a few of its items' (the disagreeing first) and a count.
function shadowsOfStep(name, step) {
  if (step.shadow) return shadowOf(name, step.output, step.duration_ms, step.shadow);
  const items = (step.items || []).map((item, index) => ({ item, index })).filter(({ item }) => item.shadow);
  if (!items.length) return null;
  const agree = items.filter(({ item }) => item.shadow.agree === true).length;
  items.sort((a, b) => Number(a.item.shadow.agree !== false) - Number(b.item.shadow.agree !== false));
  const took = (item) => (item.started_at && item.finished_at ? new Date(item.finished_at) - new Date(item.started_at) : null);
  return el(
    "div",
    { class: "shadows" },
    el("p", {}, `shadows: ${agree} of ${items.length} items agree`),
    ...items.slice(0, SHOWN_ITEMS).map(({ item, index }) =>
      el("div", {}, el("p", { class: "muted" }, `item ${index}`), shadowOf(`${name}#${index}`, (step.output || [])[index], took(item), item.shadow)),
    ),
  );
}

// Per step with a shadow, over the flow's latest executions.
async function drawAgreement(flowName) {
  const section = document.getElementById("agreement-section");
  const report = await api(`/flows/${encodeURIComponent(flowName)}/shadows`);
  section.hidden = !report.steps.length;
  if (!report.steps.length) return;
  document.getElementById("agreement-note").textContent = `over the latest ${report.executions} ended executions`;
  const percent = (share) => (share === null ? "—" : `${(share * 100).toFixed(1)} %`);
  const rows = report.steps.map((step) =>
    el(
      "tr",
      { "data-step": step.step },
      el("td", {}, step.step),
      el("td", { class: "number" }, step.shadowed),
      el("td", { class: "number agreement" }, percent(step.agreement)),
      el("td", { class: "number" }, `${step.agree} / ${step.disagree} / ${step.errors}`),
      el("td", { class: "number" }, seconds(step.primary_ms)),
      el("td", { class: "number" }, seconds(step.shadow_ms)),
    ),
  );
  document.querySelector("#agreement tbody").replaceChildren(...rows);
}

function comparePage() {
  const box = document.getElementById("compared");
  const [first, second] = [box.dataset.first, box.dataset.second];
  const get = (id) => api(`/executions/${encodeURIComponent(id)}`);
  Promise.all([api(`/executions/${encodeURIComponent(first)}/compare/${encodeURIComponent(second)}`), get(first), get(second)])
    .then(([comparison, a, b]) => {
      showError(null);
      document.getElementById("summary").replaceChildren(
        comparison.equal ? el("span", { class: "badge succeeded" }, "equal") : el("span", { class: "badge partial" }, "different"),
        " ",
        executionLink(first),
        " and ",
        executionLink(second),
      );
      const blocks = Object.entries(comparison.steps).map(([name, step]) => {
        const statuses = step.statuses.map((status) => status || "no outcome").join(" → ");
        const where = step.differences.length ? `differs at ${step.differences.join(", ")}${step.truncated ? ", …" : ""}` : "";
        return el(
          "details",
          { class: "step", "data-step": name, open: step.equal ? null : "" },
          el("summary", {}, name, " ", step.equal ? badge("succeeded") : el("span", { class: "badge partial" }, "differs")),
          el("p", { class: "muted" }, statuses, where ? ` · ${where}` : ""),
          step.equal ? null : sideBySide((a.steps[name] || {}).output, (b.steps[name] || {}).output, step.differences, [first, second]),
        );
      });
      box.replaceChildren(...blocks);
    })
    .catch(showError);
}
