// The Usage Transparency dashboard. It uses only the public API of this service, with the
// signed-in tenant's token; every value from the API reaches the page as text (textContent),
// never as markup.

const API = "/api/usagetransparency/v3";
const TOKEN_KEY = "uts.token";
const REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function badge(status) {
  return el("span", { class: `badge status-${String(status).toLowerCase()}` }, status);
}

// ---- session ---------------------------------------------------------------------------------

let token = null;

/** The token's claims, for display only: the API decides what the token may do. */
function claims(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

function notice(message) {
  const node = $("notice");
  node.textContent = message ?? "";
  node.hidden = !message;
}

class ApiError extends Error {
  constructor(status, body) {
    const first = body?.errors?.[0];
    super(first ? `${first.message} (${first.code})` : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const url = `${API}${path}${query.size ? `?${query}` : ""}`;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" } });
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    signOut(`Signed out: ${new ApiError(401, body).message}`);
    throw new ApiError(401, body);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function signIn(jwt) {
  token = jwt.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  const claim = claims(token);
  $("session-tenant").textContent = claim.ten ?? "?";
  $("session-expiry").textContent = claim.exp ? `until ${new Date(claim.exp * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC` : "";
  $("session").hidden = false;
  $("tab-admin").hidden = !mayAdminister(claim);
  $("sign-in-view").hidden = true;
  $("app-view").hidden = false;
  notice(null);
  showTab("jobs");
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopRefresh();
  // Nothing of the previous tenant survives: no selected job, first page.
  selectedJob = null;
  jobsState.page = 0;
  rulesState.page = 0;
  adminKpisState.page = 0;
  $("rules-table").tBodies[0].replaceChildren();
  $("admin-kpis-table").tBodies[0].replaceChildren();
  $("kpi-result").hidden = true;
  $("session").hidden = true;
  $("app-view").hidden = true;
  $("job-detail").hidden = true;
  $("sign-in-view").hidden = false;
  $("token-input").value = "";
  notice(message);
}

// ---- periodic refresh --------------------------------------------------------------------------

let timer = null;
let refreshing = false;

function startRefresh() {
  stopRefresh();
  timer = setInterval(async () => {
    if (document.hidden || refreshing || !token) return;
    refreshing = true;
    try {
      await loadJobs();
      if (selectedJob) await loadJob();
    } finally {
      refreshing = false;
    }
  }, REFRESH_MS);
}

function stopRefresh() {
  if (timer) clearInterval(timer);
  timer = null;
}

// ---- paging ------------------------------------------------------------------------------------

/** Makes the pager `id` (an empty `div.pager`): Previous, the page text, Next, wired to `state.page` and `reload`. */
function pager(id, state, reload) {
  const step = (by, label) => {
    const button = el("button", { type: "button", "data-step": by }, label);
    button.addEventListener("click", () => {
      state.page = Math.max(0, state.page + by);
      reload();
    });
    return button;
  };
  $(id).replaceChildren(step(-1, "Previous"), el("span", { class: "pager-text" }), step(1, "Next"));
}

/** A table row of plain cells; a cell given as `num(value)` is right-aligned. */
function row(attributes, ...cells) {
  return el("tr", attributes, ...cells.map((cell) => (cell instanceof Node && cell.tagName === "TD" ? cell : el("td", {}, cell))));
}

function num(value) {
  return el("td", { class: "num" }, value);
}

/** Shows `rows` in the table `name-table`, "none" in `name-empty` when there are none, and `page` in `name-pager`. */
function showRows(name, rows, page) {
  $(`${name}-table`).tBodies[0].replaceChildren(...rows);
  const empty = document.getElementById(`${name}-empty`);
  if (empty) empty.hidden = rows.length > 0;
  showPage(`${name}-pager`, page);
}

function showPage(id, page) {
  const root = $(id);
  const pages = Math.max(page.totalPages, 1);
  root.querySelector(".pager-text").textContent = `Page ${page.number + 1} of ${pages} (${page.totalElements} in all)`;
  root.querySelector("[data-step='-1']").disabled = page.number <= 0;
  root.querySelector("[data-step='1']").disabled = page.number + 1 >= page.totalPages;
}

// ---- jobs --------------------------------------------------------------------------------------

const jobsState = { page: 0 };
let selectedJob = null;
const summaryState = { page: 0 };
const errorsState = { page: 0 };

function jobFilters() {
  return {
    date: $("filter-date").value,
    tenant: $("filter-tenant").value.trim(),
    application: $("filter-application").value.trim(),
    unit: $("filter-unit").value.trim(),
    size: $("filter-size").value,
  };
}

async function loadJobs() {
  try {
    const answer = await api("/usagesJobs", { ...jobFilters(), page: jobsState.page });
    const rows = answer.jobs.map((job) => {
      const open = el("button", { type: "button", class: "link" }, job.id);
      open.addEventListener("click", () => selectJob(job.id));
      return el(
        "tr",
        { "data-job-id": job.id, class: job.id === selectedJob ? "selected" : null },
        el("td", {}, open),
        el("td", {}, job.time),
        el("td", { class: "num" }, job.usagesCount),
        el("td", { class: "job-status" }, badge(job.status)),
      );
    });
    showRows("jobs", rows, answer.page);
    if (answer.page.totalPages > 0 && jobsState.page >= answer.page.totalPages) {
      jobsState.page = answer.page.totalPages - 1;
    }
    notice(null);
  } catch (err) {
    if (err.status !== 401) notice(`Jobs: ${err.message}`);
  }
}

function selectJob(id) {
  selectedJob = id;
  summaryState.page = 0;
  errorsState.page = 0;
  for (const row of $("jobs-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.jobId === id);
  loadJob();
}

async function loadJob() {
  const id = selectedJob;
  try {
    const [job, errors] = await Promise.all([
      api(`/usagesJobs/${encodeURIComponent(id)}`, { page: summaryState.page, size: 20 }),
      api(`/usagesJobs/${encodeURIComponent(id)}/errors`, { errorClass: $("error-class").value, page: errorsState.page, size: 20 }),
    ]);
    if (id !== selectedJob) return; // another job was picked, or the detail closed, meanwhile
    $("job-id").textContent = job.id;
    $("job-status").replaceChildren(badge(job.status));
    $("job-time").textContent = job.time;
    $("job-count").textContent = job.usagesCount;
    showRows(
      "summary",
      job.usagesSummary.map((s) => row({}, s.application, s.unit, badge(s.processStatus), num(s.usagesCount))),
      job.page,
    );
    showRows(
      "errors",
      errors.errors.map((e) => row({}, el("code", {}, e.code), e.message, e.errorType, e.info)),
      errors.page,
    );
    $("job-detail").hidden = false;
  } catch (err) {
    if (err.status !== 401) notice(`Job ${id}: ${err.message}`);
  }
}

// ---- monthly KPIs ------------------------------------------------------------------------------

function kpiRole() {
  return document.querySelector("input[name='kpi-role']:checked").value;
}

/** Fills the KPI list with what the caller may ask for (GET /kpis). */
async function loadKpiChoices() {
  try {
    const answer = await api("/kpis", { size: 100 });
    const choice = $("kpi-choice");
    const options = answer.kpis.map((kpi, i) => {
      const option = el("option", { value: String(i) }, `${kpi.KPIDisplayName || kpi.KPIName} · ${kpi.applicationDisplayName || kpi.application} (${kpi.role === "provider" ? "yours" : `from ${kpi.provider}`})`);
      option.kpi = kpi;
      return option;
    });
    choice.replaceChildren(choice.options[0], ...options);
  } catch (err) {
    if (err.status !== 401) notice(`KPIs: ${err.message}`);
  }
}

/** Picking a KPI from the list fills the form and shows it. */
function pickKpi() {
  const option = $("kpi-choice").selectedOptions[0];
  if (!option?.kpi) return;
  const kpi = option.kpi;
  for (const radio of document.querySelectorAll("input[name='kpi-role']")) radio.checked = radio.value === kpi.role;
  $("kpi-provider-label").hidden = kpi.role !== "consumer";
  $("kpi-provider").value = kpi.provider;
  $("kpi-application").value = kpi.application;
  $("kpi-name").value = kpi.KPIName;
  loadKpi();
}

function formatNumber(value) {
  return value === null || value === undefined ? "—" : String(value);
}

async function loadKpi() {
  const [year, month] = $("kpi-month").value.split("-");
  const params = {
    year,
    month,
    application: $("kpi-application").value.trim(),
    KPIName: $("kpi-name").value.trim(),
    includeDailyValues: "true",
  };
  try {
    let answer;
    if (kpiRole() === "consumer") {
      answer = await api("/aggregatedMonthlyConsumerUsage", { ...params, provider: $("kpi-provider").value.trim() });
    } else {
      answer = await api("/aggregatedMonthlyProviderUsage", { ...params, size: 100 });
    }
    showKpi(answer);
    notice(null);
  } catch (err) {
    $("kpi-result").hidden = true;
    if (err.status !== 401) notice(`KPI: ${err.message}`);
  }
}

function showKpi(answer) {
  const functions = answer.aggragationFunction;
  $("kpi-title").textContent = `${answer.KPIDisplayName || answer.KPIName} · ${answer.applicationDisplayName || answer.application}`;
  $("kpi-functions").textContent =
    `daily ${functions.aggregationFunctionDaily}, monthly ${functions.aggregationFunctionMonthly}, ` +
    `pre-fill ${functions.preFill}; ${answer.month} ${answer.year} up to ${answer.aggregationUntilDate}`;
  const consumers = $("kpi-consumers");
  if (answer.aggregatedUsages) {
    // Provider: every consumer's value; the chart shows the one picked (first by default).
    const usages = answer.aggregatedUsages;
    const total = usages.length;
    $("kpi-value").textContent = total ? `${total} consumer${total === 1 ? "" : "s"}` : "no consumers";
    $("kpi-scope").textContent = "";
    const pick = (usage) => {
      for (const row of consumers.tBodies[0].rows) row.classList.toggle("selected", row.dataset.consumer === usage.consumer);
      chart(usage.dailyValues ?? [], `Daily values of ${usage.consumer}`);
    };
    consumers.tBodies[0].replaceChildren(
      ...usages.map((usage) => {
        const row = el("tr", { "data-consumer": usage.consumer }, el("td", {}, usage.consumer), el("td", { class: "num" }, formatNumber(usage.value)));
        row.addEventListener("click", () => pick(usage));
        return row;
      }),
    );
    consumers.hidden = total === 0;
    if (total) pick(usages[0]);
    else chart([], "No daily values");
  } else {
    $("kpi-value").textContent = formatNumber(answer.value);
    $("kpi-scope").textContent = `for ${answer.consumer}, provider ${answer.provider}`;
    consumers.hidden = true;
    chart(answer.dailyValues ?? [], "Daily values");
  }
  $("kpi-result").hidden = false;
}

/** A bar chart of the daily values: one bar per day, a gap for a day without a value. */
function chart(days, caption) {
  const root = $("kpi-chart");
  const [width, height, left, bottom, top] = [640, 240, 48, 22, 10];
  const values = days.map((d) => (d.value === null ? null : Number(d.value)));
  const max = Math.max(0, ...values.filter((v) => v !== null));
  const min = Math.min(0, ...values.filter((v) => v !== null));
  const span = max - min || 1;
  const y = (v) => top + ((max - v) / span) * (height - top - bottom);
  const step = (width - left) / Math.max(days.length, 1);
  const nodes = [
    svg("line", { x1: left, x2: width, y1: y(0), y2: y(0), class: "axis" }),
    svg("text", { x: left - 4, y: top + 4, class: "tick", "text-anchor": "end" }, String(max)),
    svg("text", { x: left - 4, y: y(min) + 4, class: "tick", "text-anchor": "end" }, String(min)),
  ];
  days.forEach((day, i) => {
    const x = left + i * step;
    const label = String(Number(day.date.slice(8)));
    if (days.length <= 16 || i % 2 === 0) {
      nodes.push(svg("text", { x: x + step / 2, y: height - 6, class: "tick", "text-anchor": "middle" }, label));
    }
    if (values[i] === null) return;
    const [y1, y2] = [y(Math.max(values[i], 0)), y(Math.min(values[i], 0))];
    nodes.push(
      svg(
        "rect",
        { x: x + step * 0.15, width: step * 0.7, y: y1, height: Math.max(y2 - y1, 0.5), class: "bar", "data-date": day.date, "data-value": day.value },
        svg("title", {}, `${day.date}: ${day.value}`),
      ),
    );
  });
  root.replaceChildren(...nodes);
  root.setAttribute("aria-label", `${caption}: ${days.length} days`);
  $("chart-caption").textContent = caption;
}

// ---- rules and KPIs (admin) -------------------------------------------------------------------

const rulesState = { page: 0 };
const adminKpisState = { page: 0 };
const ADMIN_SCOPES = ["uts.admin", "uts.provider.admin", "uts.su"];

/** The token's scopes (a list, or one space-separated string). */
function scopesOf(claim) {
  return Array.isArray(claim.scope) ? claim.scope : String(claim.scope ?? "").split(" ");
}

/** Whether the token may read the admin API (display only: the API decides). */
function mayAdminister(claim) {
  return scopesOf(claim).some((scope) => ADMIN_SCOPES.includes(scope));
}

function yesNo(value) {
  return value ? "yes" : "no";
}

/** The rules and KPIs the token may see: a provider's own, or all of them for the operator. */
async function loadAdmin() {
  const claim = claims(token);
  const scopes = scopesOf(claim);
  $("admin-scope").textContent = scopes.includes("uts.admin") || scopes.includes("uts.su")
    ? "Every provider's rules and KPIs (service operator)."
    : `The rules and KPIs owned by ${claim.ten ?? "?"}.`;
  try {
    const [rules, kpis] = await Promise.all([
      api("/admin/rules", { page: rulesState.page, size: 20 }),
      api("/admin/kpis", { page: adminKpisState.page, size: 20 }),
    ]);
    const ruleRows = rules.rules.map((r) =>
      row({ "data-rule-id": r.ruleId }, r.application, r.unit, r.ownerTenantId, yesNo(r.active), r.aggregationFunction,
        yesNo(r.billingEnabled), num(r.minValue ?? ""), num(r.maxValue ?? ""), r.version),
    );
    showRows("rules", ruleRows, rules.page);
    const kpiRows = kpis.kpis.map((k) =>
      row({ "data-kpi-id": k.kpiId }, k.name, k.application, k.unit, k.ownerTenantId, k.aggregationFunctionDaily,
        k.aggregationFunctionMonthly, k.preFill, num(k.unitConversionFactor), k.version),
    );
    showRows("admin-kpis", kpiRows, kpis.page);
    notice(null);
  } catch (err) {
    if (err.status !== 401) notice(`Rules and KPIs: ${err.message}`);
  }
}

// ---- tabs and start-up -------------------------------------------------------------------------

function showTab(name) {
  for (const tab of ["jobs", "kpis", "admin"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(name === tab));
    $(`${tab}-view`).hidden = name !== tab;
  }
  if (name === "jobs") {
    loadJobs();
    startRefresh();
  } else {
    stopRefresh();
    if (name === "kpis") loadKpiChoices();
    else loadAdmin();
  }
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

function start() {
  $("filter-date").value = today();
  $("kpi-month").value = today().slice(0, 7);
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token-input").value);
  });
  $("sign-out").addEventListener("click", () => signOut(null));
  $("tab-jobs").addEventListener("click", () => showTab("jobs"));
  $("tab-kpis").addEventListener("click", () => showTab("kpis"));
  $("tab-admin").addEventListener("click", () => showTab("admin"));
  $("jobs-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    jobsState.page = 0;
    loadJobs();
  });
  $("job-close").addEventListener("click", () => {
    selectedJob = null;
    $("job-detail").hidden = true;
    for (const row of $("jobs-table").tBodies[0].rows) row.classList.remove("selected");
  });
  pager("jobs-pager", jobsState, loadJobs);
  pager("summary-pager", summaryState, loadJob);
  pager("errors-pager", errorsState, loadJob);
  pager("rules-pager", rulesState, loadAdmin);
  pager("admin-kpis-pager", adminKpisState, loadAdmin);
  $("error-class").addEventListener("change", () => {
    errorsState.page = 0;
    loadJob();
  });
  for (const radio of document.querySelectorAll("input[name='kpi-role']")) {
    radio.addEventListener("change", () => {
      $("kpi-provider-label").hidden = kpiRole() !== "consumer";
    });
  }
  $("kpi-choice").addEventListener("change", pickKpi);
  $("kpi-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadKpi();
  });

  window.addEventListener("hashchange", () => {
    const handed = fragmentToken();
    if (handed) signIn(handed);
  });
  const saved = fragmentToken() ?? sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else signOut(null);
}

/** A token handed over in the fragment (never sent to a server), wiped from the address bar. */
function fragmentToken() {
  const handed = new URLSearchParams(location.hash.slice(1)).get("token");
  if (handed) history.replaceState(null, "", location.pathname + location.search);
  return handed;
}

start();
