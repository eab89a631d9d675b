// The syncfleet operator dashboard: one page, no build step, no framework. It polls the admin API
// every POLL_MS with the bearer token the operator pasted (kept in sessionStorage) and renders
// queues, workers, active runs (steps by tier), run history with per-step metrics and item errors,
// and schedules. Action buttons appear only for roles allowed to use them; the API checks again.

import { ApiError, api, describe, enc, query, setToken } from './api.js';
import { $, DASH, actionButton, badge, every, fill, h, list, num, relative, shortId, show, span, table, time } from './dom.js';
import { ACTIVE, dag, itemErrors, runHeader, stepMetrics, stepNotes } from './runs.js';

const POLL_MS = 2000;
const CATALOG_MS = 30000; // chains and integrations change rarely
const HISTORY_PAGE = 15;
const TOKEN_KEY = 'syncfleet.token';
const UNREACHABLE = 'producer'; // banner line of failed requests that got no answer
const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };
/** The least role each action needs. */
const NEEDS = { trigger: 'operator', resume: 'operator', cancel: 'operator', pause: 'operator' };

const state = {
  me: null, // { name, role } of the signed-in token
  session: 0, // bumped on sign-in and sign-out, so a late answer of an old session is dropped
  chains: [],
  integrations: [],
  catalogAt: 0,
  queues: null,
  workers: null,
  schedules: null,
  active: null,
  history: null,
  filter: { chain: '', integration: '', status: '' },
  offset: 0,
  selected: null, // id of the run in the detail panel
  detail: null,
  itemErrors: null,
  itemErrorsFor: null, // `${id}:${status}` the item errors were read for
  errors: new Map(), // source → text, shown in the banner
  timer: null,
  polling: false,
  again: false,
};

function can(action) {
  const role = state.me && state.me.role;
  return Object.hasOwn(ROLE_RANK, role) && ROLE_RANK[role] >= ROLE_RANK[NEEDS[action]];
}

// ---------------------------------------------------------------------------------------------
// Banner and notices

function setError(source, error) {
  if (error) state.errors.set(source, typeof error === 'string' ? error : describe(error));
  else state.errors.delete(source);
  renderBanner();
}

function renderBanner() {
  const banner = $('#banner');
  banner.hidden = state.errors.size === 0;
  fill(
    '#banner-list',
    [...state.errors].map(([source, text]) => h('li', null, h('strong', null, `${source}:`), ` ${text}`)),
  );
}

let noticeTimer = null;
function notice(text) {
  const el = $('#notice');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (el.hidden = true), 5000);
}

// ---------------------------------------------------------------------------------------------
// Session

async function signIn(token) {
  const session = newSession();
  setToken(token);
  const button = $('#login-form button[type=submit]');
  button.disabled = true;
  let me;
  try {
    me = await api('GET', '/api/whoami');
  } catch (e) {
    if (session !== state.session) return;
    button.disabled = false;
    setToken(null);
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e.status === 401 ? 'This token was not accepted.' : describe(e));
    return;
  }
  if (session !== state.session) return;
  button.disabled = false;
  state.me = { name: me && me.name, role: me && me.role };
  sessionStorage.setItem(TOKEN_KEY, token);
  showApp();
  refresh();
}

/** Starts a new session: answers of polls still in flight are dropped. */
function newSession() {
  clearTimeout(state.timer);
  state.polling = false;
  state.again = false;
  return ++state.session;
}

function signOut(message) {
  newSession();
  setToken(null);
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, {
    me: null, chains: [], integrations: [], catalogAt: 0, queues: null, workers: null,
    schedules: null, active: null, history: null, offset: 0, selected: null, detail: null,
    itemErrors: null, itemErrorsFor: null,
  });
  state.errors.clear();
  renderBanner();
  $('#notice').hidden = true;
  showLogin(message);
}

function showLogin(message) {
  $('#login-form button[type=submit]').disabled = false;
  $('#app').hidden = true;
  $('#whoami').hidden = true;
  $('#logout').hidden = true;
  $('#updated').textContent = '';
  $('#login').hidden = false;
  const err = $('#login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('#token').value = '';
  $('#token').focus();
}

function showApp() {
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#logout').hidden = false;
  const who = $('#whoami');
  fill(who, h('span', null, show(state.me.name)), ' ', h('span', { class: `role r-${show(state.me.role).replace(/[^a-z]/g, '')}` }, show(state.me.role)));
  who.hidden = false;
  fill('#trigger-panel');
  $('#trigger-panel').hidden = true; // until the chains are read
  for (const id of ['#queues', '#workers', '#active', '#history', '#schedules']) fill(id, table([], null));
  $('#detail-card').hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Polling

/** Polls now (or right after the poll in flight), then every POLL_MS. */
async function refresh() {
  if (state.polling) {
    state.again = true;
    return;
  }
  clearTimeout(state.timer);
  const session = state.session;
  if (document.hidden) {
    state.timer = setTimeout(refresh, POLL_MS);
    return;
  }
  state.polling = true;
  state.errors.delete(UNREACHABLE); // set again below while the producer does not answer
  try {
    if (Date.now() - state.catalogAt > CATALOG_MS) await loadCatalog(session);
    await Promise.all([
      load(session, 'queues', () => api('GET', '/api/queues'), (v) => (state.queues = list(v))),
      load(session, 'workers', () => api('GET', '/api/workers'), (v) => (state.workers = list(v))),
      load(session, 'schedules', () => api('GET', '/api/schedules'), (v) => (state.schedules = list(v))),
      load(session, 'active runs', fetchActive, (v) => (state.active = v)),
      load(session, 'run history', fetchHistory, (v) => (state.history = v)),
      load(session, 'run', fetchDetail, applyDetail),
    ]);
  } catch (e) {
    if (session === state.session) {
      if (e instanceof ApiError && e.status === 401) return signOut('Your token is no longer accepted; sign in again.');
      state.errors.set('dashboard', describe(e));
    }
  } finally {
    if (session === state.session) state.polling = false;
  }
  if (session !== state.session) return;
  render();
  $('#updated').textContent = `updated ${time(new Date())}`;
  const again = state.again;
  state.again = false;
  state.timer = setTimeout(refresh, again ? 0 : POLL_MS);
}

/**
 * Fetches one part of the page and, if the session is still the same, applies it. A failure goes
 * to the banner under `source` until the part loads again; 401 ends the session.
 */
async function load(session, source, fetcher, apply) {
  try {
    const value = await fetcher();
    if (session !== state.session) return;
    apply(value);
    state.errors.delete(source);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;
    // One line for an unreachable producer, not one per part of the page.
    if (session === state.session) state.errors.set(e.status === 0 ? UNREACHABLE : source, describe(e));
  }
}

async function loadCatalog(session) {
  await Promise.all([
    load(session, 'chains', () => api('GET', '/api/chains'), (v) => (state.chains = list(v))),
    load(session, 'integrations', () => api('GET', '/api/integrations'), (v) => (state.integrations = list(v))),
  ]);
  if (session !== state.session) return;
  state.catalogAt = Date.now();
  renderTriggerPanel();
  renderHistoryFilter();
}

const runsOf = (page) => (Array.isArray(page) ? page : list(page && page.runs));

async function fetchActive() {
  const pages = await Promise.all(
    ['running', 'queued'].map((status) => api('GET', `/api/runs?${query({ status, limit: 50 })}`)),
  );
  // The list has no steps; read each active run in full.
  const runs = await Promise.all(
    pages.flatMap(runsOf).map((r) =>
      api('GET', `/api/runs/${enc(r.id)}`).catch((e) => {
        if (e.status === 401) throw e;
        return { ...r, loadError: describe(e) };
      }),
    ),
  );
  return runs.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
}

async function fetchHistory() {
  const page = await api('GET', `/api/runs?${query({ ...state.filter, limit: HISTORY_PAGE, offset: state.offset })}`);
  return { runs: runsOf(page), total: page && typeof page.total === 'number' ? page.total : null };
}

async function fetchDetail() {
  const id = state.selected;
  if (!id) return null;
  const run = await api('GET', `/api/runs/${enc(id)}`);
  // Item errors change only while the run is open, or when its status moves (resume).
  const key = `${id}:${run && run.status}`;
  const stale = state.itemErrorsFor !== key || ACTIVE.has(run && run.status);
  const errors = stale ? list(await api('GET', `/api/runs/${enc(id)}/errors`)) : state.itemErrors;
  return { id, run, errors, key };
}

function applyDetail(d) {
  if (!d || d.id !== state.selected) return;
  state.detail = d.run;
  state.itemErrors = d.errors;
  state.itemErrorsFor = d.key;
}

function select(id) {
  if (state.selected !== id) {
    state.selected = id;
    state.detail = null;
    state.itemErrors = null;
    state.itemErrorsFor = null;
  }
  renderDetail();
  renderHistory();
  refresh();
}

// ---------------------------------------------------------------------------------------------
// Actions

/**
 * Runs the API call of a button: disables it meanwhile, then shows `done(answer)` as a notice or
 * the error in the banner under `label`, and refreshes the page.
 */
async function act(button, label, call, done) {
  if (button) button.disabled = true;
  try {
    const answer = await call();
    state.errors.delete(label);
    renderBanner();
    notice(done(answer));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut('Your token is no longer accepted; sign in again.');
    setError(label, e);
    if (e instanceof ApiError && e.code === 'active_run' && e.body && e.body.run_id) select(String(e.body.run_id));
  } finally {
    if (button) button.disabled = false;
  }
  refresh();
}

function cancelRun(run, button) {
  if (!window.confirm(`Cancel run ${shortId(run.id)} (${run.chain} for ${run.integration})?`)) return;
  act(button, `Cancel run ${shortId(run.id)}`, () => api('POST', `/api/runs/${enc(run.id)}/cancel`), () => `Run ${shortId(run.id)} cancelled.`);
}

function resumeRun(run, button) {
  act(button, `Resume run ${shortId(run.id)}`, () => api('POST', `/api/runs/${enc(run.id)}/resume`), () => `Run ${shortId(run.id)} resumed.`);
}

function pauseQueue(queue, pause, button) {
  const verb = pause ? 'pause' : 'resume';
  act(button, `${pause ? 'Pause' : 'Resume'} queue ${queue}`, () => api('POST', `/api/queues/${enc(queue)}/${verb}`), () => `Queue ${queue} ${pause ? 'paused' : 'resumed'}.`);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function render() {
  renderBanner();
  renderQueues();
  renderWorkers();
  renderActive();
  renderHistory();
  renderDetail();
  renderSchedules();
}

/** Sets the options of a select to `values` (after a "" option labelled `blank`, if given), keeping the choice. */
function options(select, values, blank) {
  const current = select.value;
  const opts = values.map((v) => h('option', { value: v }, v));
  select.replaceChildren(...(blank ? [h('option', { value: '' }, blank)] : []), ...opts);
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function renderHistoryFilter() {
  const form = $('#history-filter');
  options(form.elements.chain, state.chains.map((c) => c.name).filter(Boolean), 'all chains');
  options(form.elements.integration, state.integrations.map((i) => i.name).filter(Boolean), 'all integrations');
}

function renderTriggerPanel() {
  const panel = $('#trigger-panel');
  if (!can('trigger')) {
    panel.hidden = true;
    fill(panel);
    return;
  }
  panel.hidden = false;
  let form = $('#trigger-form');
  if (!form) {
    form = h(
      'form',
      { id: 'trigger-form', class: 'inline', onsubmit: triggerRun },
      h('h2', null, 'Trigger a run'),
      h('label', null, 'Chain ', h('select', { id: 'trigger-chain', name: 'chain', required: true, onchange: renderTriggerChoices })),
      h('label', null, 'Integration ', h('select', { id: 'trigger-integration', name: 'integration', required: true })),
      h(
        'label',
        null,
        'Mode ',
        h('select', { id: 'trigger-mode', name: 'mode' }, h('option', { value: 'incremental' }, 'incremental'), h('option', { value: 'full' }, 'full')),
      ),
      h('label', null, 'Step ', h('select', { id: 'trigger-step', name: 'step' })),
      h('button', { type: 'submit', dataset: { action: 'trigger' } }, 'Trigger'),
      h('span', { id: 'trigger-about', class: 'muted' }),
    );
    fill(panel, form);
  }
  const chains = state.chains.map((c) => c.name).filter(Boolean);
  options(form.elements.chain, chains, chains.length ? null : 'no chains');
  renderTriggerChoices();
}

/** Integrations (of the chain's pack, when both say theirs) and steps of the chosen chain. */
function renderTriggerChoices() {
  const form = $('#trigger-form');
  if (!form) return;
  const chain = state.chains.find((c) => c.name === form.elements.chain.value);
  const fits = (i) => i.enabled !== false && (!chain || !chain.pack || !i.pack || chain.pack === i.pack);
  const integrations = state.integrations.filter(fits).map((i) => i.name).filter(Boolean);
  options(form.elements.integration, integrations, integrations.length ? null : 'no integrations');
  options(form.elements.step, list(chain && chain.steps).map((s) => s.name).filter(Boolean), 'whole chain');
  $('#trigger-about').textContent = (chain && chain.description) || '';
}

function triggerRun(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const f = form.elements;
  const body = { integration: f.integration.value, mode: f.mode.value };
  if (f.step.value) body.step = f.step.value;
  const chain = f.chain.value;
  const label = `Trigger ${chain || DASH} for ${body.integration || DASH}`;
  if (!chain || !body.integration) return setError(label, 'choose a chain and an integration');
  act(form.querySelector('button[type=submit]'), label, () => api('POST', `/api/chains/${enc(chain)}/runs`, body), (answer) => {
    const id = answer && answer.run_id ? String(answer.run_id) : null;
    if (id) select(id);
    return `Run ${shortId(id)} of ${chain} for ${body.integration} created.`;
  });
}

function renderQueues() {
  const columns = [
    { label: 'Queue', cell: (q) => h('strong', null, show(q.queue)) },
    { label: 'State', cell: (q) => (q.paused === true ? badge('paused') : q.paused === false ? badge('active') : DASH) },
    ...['ready', 'runnable', 'scheduled', 'inflight', 'blocked', 'dead', 'done', 'workers'].map((k) => ({
      label: k === 'inflight' ? 'in flight' : k,
      num: true,
      cell: (q) => num(q[k]),
    })),
  ];
  if (can('pause')) {
    columns.push({
      label: '',
      cell: (q) =>
        q.paused
          ? actionButton('unpause', 'Resume', (e) => pauseQueue(q.queue, false, e.currentTarget))
          : actionButton('pause', 'Pause', (e) => pauseQueue(q.queue, true, e.currentTarget), 'small secondary'),
    });
  }
  fill('#queues', table(columns, state.queues, { empty: 'No queues.', rowProps: (q) => ({ dataset: { queue: show(q.queue) } }) }));
}

function runLink(runId, label) {
  return h('button', { type: 'button', class: 'link', onclick: () => select(String(runId)) }, label || shortId(runId));
}

/** Whether a running job is one shard of a fanned-out step (every job has a shard number, 0 if not). */
function fannedOut(job) {
  if (typeof job.shard !== 'number') return false;
  const chain = state.chains.find((c) => c.name === job.chain);
  const step = list(chain && chain.steps).find((s) => s.name === job.step);
  return step && typeof step.shards === 'number' ? step.shards > 1 : job.shard > 0;
}

function renderWorkers() {
  const current = (w) => {
    const jobs = list(w.current);
    if (!jobs.length) return h('span', { class: 'muted' }, 'idle');
    return jobs.map((j) =>
      h(
        'div',
        { class: 'job' },
        h('strong', null, show(j.step)),
        fannedOut(j) ? ` shard ${j.shard}` : '',
        j.chain ? ` of ${j.chain}` : '',
        ' · run ',
        j.run_id ? runLink(j.run_id) : DASH,
        ` · ${span(j.started_at)}`,
      ),
    );
  };
  const columns = [
    { label: 'Worker', cell: (w) => show(w.name) },
    { label: 'Queues', cell: (w) => show(list(w.queues).join(', ')) },
    { label: 'Last seen', cell: (w) => relative(w.last_seen) },
    { label: 'Running', cell: current },
  ];
  fill('#workers', table(columns, state.workers, { empty: 'No worker is connected.' }));
}

/** What the run views need from the page. */
function runContext() {
  return { selected: state.selected, can, select, cancel: cancelRun, resume: resumeRun };
}

function renderActive() {
  if (state.active === null) return fill('#active', table([], null));
  if (!state.active.length) return fill('#active', h('p', { class: 'muted empty' }, 'No run is queued or running.'));
  fill(
    '#active',
    state.active.map((run) =>
      h(
        'article',
        { class: 'run', dataset: { runId: show(run.id), status: show(run.status) } },
        runHeader(run, 'h3', runContext()),
        run.loadError ? h('p', { class: 'error' }, run.loadError) : dag(run, state.chains),
      ),
    ),
  );
}

function renderHistory() {
  const hist = state.history;
  const columns = [
    { label: 'Created', cell: (r) => time(r.created_at) },
    { label: 'Chain', cell: (r) => show(r.chain) },
    { label: 'Integration', cell: (r) => show(r.integration) },
    { label: 'Mode', cell: (r) => show(r.mode) },
    { label: 'Status', cell: (r) => badge(r.status) },
    { label: 'Trigger', cell: (r) => `${show(r.trigger)} · ${show(r.triggered_by)}` },
    { label: 'Duration', num: true, cell: (r) => (r.started_at ? span(r.started_at, r.finished_at) : DASH) },
    { label: 'Run', cell: (r) => h('code', null, shortId(r.id)) },
  ];
  const rowProps = (r) => ({
    class: r.id === state.selected ? 'clickable selected' : 'clickable',
    dataset: { runId: show(r.id), status: show(r.status) },
    onclick: () => select(r.id),
  });
  if (!hist) return fill('#history', table(columns, null));
  const first = state.offset + 1;
  const last = state.offset + hist.runs.length;
  const more = hist.total !== null ? last < hist.total : hist.runs.length === HISTORY_PAGE;
  const pager = h(
    'div',
    { class: 'pager' },
    h('span', { class: 'muted' }, hist.runs.length ? `${first}–${last}${hist.total !== null ? ` of ${hist.total}` : ''}` : ''),
    h('button', { type: 'button', class: 'small secondary', disabled: state.offset === 0, onclick: () => page(-1) }, 'Newer'),
    h('button', { type: 'button', class: 'small secondary', disabled: !more, onclick: () => page(1) }, 'Older'),
  );
  fill('#history', table(columns, hist.runs, { empty: 'No runs.', rowProps }), pager);
}

function page(direction) {
  state.offset = Math.max(0, state.offset + direction * HISTORY_PAGE);
  refresh();
}

function renderDetail() {
  const card = $('#detail-card');
  const el = $('#run-detail');
  card.hidden = !state.selected;
  if (!state.selected) return fill(el);
  el.dataset.runId = state.selected;
  const run = state.detail;
  if (!run || run.id !== state.selected) {
    el.dataset.status = '';
    return fill(el, h('h2', null, `Run ${shortId(state.selected)}`), h('p', { class: 'muted' }, 'Loading…'));
  }
  el.dataset.status = show(run.status);
  const close = h('button', { type: 'button', class: 'link', onclick: () => select(null) }, 'Close');
  fill(
    el,
    h('div', { class: 'card-head' }, h('h2', null, 'Run ', h('code', null, show(run.id))), close),
    runHeader(run, 'h3', runContext()),
    h(
      'p',
      { class: 'muted' },
      `created ${time(run.created_at)} · started ${time(run.started_at)} · finished ${time(run.finished_at)}`,
    ),
    run.error ? h('p', { class: 'error' }, run.error) : null,
    dag(run, state.chains),
    h('h3', null, 'Steps'),
    stepMetrics(run),
    stepNotes(run),
    h('h3', null, 'Item errors'),
    itemErrors(state.itemErrors),
  );
}

// A schedule's mode, with the steps it runs in another mode.
function modeCell(s) {
  const steps = Object.entries(s.step_modes || {}).map(([step, mode]) => `${step}=${mode}`);
  return steps.length ? `${show(s.mode)} (${steps.join(', ')})` : show(s.mode);
}

function renderSchedules() {
  const columns = [
    { label: 'Chain', cell: (s) => show(s.chain) },
    { label: 'Integration', cell: (s) => show(s.integration) },
    { label: 'Mode', cell: (s) => modeCell(s) },
    { label: 'When', cell: (s) => (s.cron ? h('code', null, s.cron) : every(s.interval_secs)) },
    { label: 'Time zone', cell: (s) => show(s.tz) },
    { label: 'Source', cell: (s) => show(s.source) },
    { label: 'Enabled', cell: (s) => (s.enabled === true ? 'yes' : s.enabled === false ? badge('disabled') : DASH) },
    {
      label: 'Next run',
      cell: (s) =>
        s.next_at
          ? `${time(s.next_at)} (${relative(s.next_at)})${s.next_run && s.tz !== 'UTC' ? ` · ${s.next_run} ${s.tz}` : ''}`
          : DASH,
    },
  ];
  fill('#schedules', table(columns, state.schedules, { empty: 'No schedules.' }));
}

// ---------------------------------------------------------------------------------------------
// Start

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#token').value.trim();
    if (token) signIn(token);
  });
  $('#logout').addEventListener('click', () => signOut());
  $('#banner-close').addEventListener('click', () => {
    state.errors.clear();
    renderBanner();
  });
  $('#history-filter').addEventListener('change', (e) => {
    state.filter[e.target.name] = e.target.value;
    state.offset = 0;
    refresh();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.me) refresh();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showLogin();
});
