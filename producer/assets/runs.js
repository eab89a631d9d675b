// Views of one run: its header with the actions the role allows, its steps by tier, per-step
// metrics and notes, and its item errors. `chains` is `GET /api/chains` (for the prerequisites);
// `ctx` carries what the header needs from the page:
// `{ selected, can(action), select(id), cancel(run, button), resume(run, button) }`.

import { DASH, actionButton, badge, duration, h, list, num, relative, shortId, show, span, table, time } from './dom.js';

export const ACTIVE = new Set(['queued', 'running']);
const RESUMABLE = new Set(['failed', 'partial']);
const METRICS = ['fetched', 'inserted', 'updated', 'unchanged', 'deactivated', 'errors', 'api_calls', 'throttled'];

/** The run's identity, status, times and the buttons the role allows. */
export function runHeader(run, tag, ctx) {
  const buttons = [];
  if (ctx.can('resume') && RESUMABLE.has(run.status)) {
    buttons.push(actionButton('resume', 'Resume', (e) => ctx.resume(run, e.currentTarget)));
  }
  if (ctx.can('cancel') && ACTIVE.has(run.status)) {
    buttons.push(actionButton('cancel', 'Cancel', (e) => ctx.cancel(run, e.currentTarget), 'small danger'));
  }
  if (ctx.selected !== run.id) {
    buttons.push(h('button', { type: 'button', class: 'small secondary', onclick: () => ctx.select(run.id) }, 'Details'));
  }
  return h(
    'div',
    { class: 'run-head' },
    h(tag, null, show(run.chain), h('span', { class: 'muted' }, ' for '), show(run.integration)),
    badge(run.status),
    run.waiting_for ? h('span', { class: 'muted' }, ` waiting for run ${shortId(run.waiting_for)}`) : null,
    h('span', { class: 'tag' }, show(run.mode)),
    h(
      'span',
      { class: 'muted' },
      `run ${shortId(run.id)} · ${show(run.trigger)} by ${show(run.triggered_by)} · `,
      when(run),
    ),
    h('span', { class: 'spacer' }),
    buttons,
  );
}

function when(run) {
  if (run.finished_at) return `finished ${relative(run.finished_at)}, took ${span(run.started_at || run.created_at, run.finished_at)}`;
  if (run.started_at) return `running for ${span(run.started_at)}`;
  return `created ${relative(run.created_at)}`;
}

/** Steps grouped by tier: a step's tier is one more than its latest prerequisite's. */
function tiers(run, chains) {
  const def = chains.find((c) => c.name === run.chain);
  const defs = new Map(list(def && def.steps).map((s) => [s.name, s]));
  const steps = list(run.steps);
  const present = new Set(steps.map((s) => s.step));
  const tierOf = new Map();
  const tier = (name, seen) => {
    if (tierOf.has(name)) return tierOf.get(name);
    if (seen.has(name)) return 0; // a chain with a cycle never validates; do not loop on one
    seen.add(name);
    const pre = list(defs.get(name) && defs.get(name).prerequisites).filter((p) => present.has(p));
    const t = pre.length ? 1 + Math.max(...pre.map((p) => tier(p, seen))) : 0;
    tierOf.set(name, t);
    return t;
  };
  const out = [];
  for (const s of steps) (out[tier(s.step, new Set())] ??= []).push({ ...s, def: defs.get(s.step) });
  return out.filter(Boolean);
}

export function dag(run, chains) {
  const columns = tiers(run, chains);
  if (!columns.length) return h('p', { class: 'muted' }, 'No steps yet.');
  const parts = [];
  columns.forEach((steps, i) => {
    if (i) parts.push(h('div', { class: 'tier-arrow', 'aria-hidden': 'true' }, '→'));
    parts.push(h('div', { class: 'tier' }, h('div', { class: 'tier-label' }, `tier ${i + 1}`), steps.map(stepBox)));
  });
  return h('div', { class: 'dag' }, parts);
}

function stepBox(s) {
  const pre = list(s.def && s.def.prerequisites);
  const shards = typeof s.shards === 'number' ? s.shards : 1;
  const done = typeof s.shards_done === 'number' ? s.shards_done : 0;
  const meta = [show(s.status)];
  if (s.partial) meta.push('partial');
  if (s.attempts > 1) meta.push(`attempt ${s.attempts}`);
  if (typeof s.duration_ms === 'number') meta.push(duration(s.duration_ms));
  return h(
    'div',
    {
      class: `step s-${show(s.status).replace(/[^a-z_]/g, '')}`,
      dataset: { step: show(s.step), status: show(s.status) },
      title: [pre.length ? `after ${pre.join(', ')}` : 'first step', s.error ? `error: ${s.error}` : ''].filter(Boolean).join('\n'),
    },
    h('div', { class: 'step-name' }, show(s.step), s.def && s.def.required === false ? h('span', { class: 'tag' }, 'optional') : null),
    h('div', { class: 'step-meta' }, meta.join(' · ')),
    shards > 1
      ? h(
          'div',
          { class: 'shards' },
          h('div', { class: 'bar' }, h('i', { style: { width: `${Math.min(100, (100 * done) / shards)}%` } })),
          h('span', null, `${done}/${shards}`),
        )
      : null,
  );
}

const LABELS = { api_calls: 'API calls' };

export function stepMetrics(run) {
  const steps = list(run.steps);
  const sum = (k) => steps.reduce((t, s) => (typeof s[k] === 'number' ? t + s[k] : t), 0);
  const columns = [
    { label: 'Step', key: 'step', cell: (s) => show(s.step) },
    { label: 'Status', key: 'status', cell: (s) => (s.partial ? [badge(s.status), ' partial'] : badge(s.status)) },
    { label: 'Shards', key: 'shards', num: true, cell: (s) => `${num(s.shards_done)}/${num(s.shards)}` },
    { label: 'Attempts', key: 'attempts', num: true, cell: (s) => num(s.attempts) },
    ...METRICS.map((k) => ({ label: LABELS[k] || k, key: k, num: true, cell: (s) => num(s[k]) })),
    { label: 'Duration', key: 'duration_ms', num: true, cell: (s) => duration(s.duration_ms) },
  ];
  const foot = (c) => (c.key === 'step' ? 'total' : METRICS.includes(c.key) || c.key === 'attempts' ? num(sum(c.key)) : '');
  return table(columns, steps, {
    empty: 'No steps.',
    rowProps: (s) => ({ dataset: { step: show(s.step) } }),
    foot: steps.length > 1 ? foot : null,
  });
}

/** Cursor, deletion guard and error of the steps that have any. */
export function stepNotes(run) {
  const steps = list(run.steps).filter((s) => s.cursor_before || s.cursor_after || s.guard || s.error);
  if (!steps.length) return null;
  return [
    // Which deletions the guard held back and how to apply them (`RunView.unapplied_deletions`).
    run.unapplied_deletions ? h('p', { class: 'error', dataset: { hint: 'unapplied-deletions' } }, run.unapplied_deletions) : null,
    h('h3', null, 'Cursors, guards and errors'),
    table(
      [
        { label: 'Step', cell: (s) => show(s.step) },
        { label: 'Cursor before → after', cell: (s) => (s.cursor_before || s.cursor_after ? `${show(s.cursor_before)} → ${show(s.cursor_after)}` : DASH) },
        // A sharded step's guard has one `shard N: …` line per shard: kept as lines (text, CSS).
        { label: 'Guard', cell: (s) => (s.guard ? h('span', { class: 'guard' }, s.guard) : DASH) },
        { label: 'Error', cell: (s) => (s.error ? h('span', { class: 'error' }, s.error) : DASH) },
      ],
      steps,
    ),
  ];
}

export function itemErrors(errors) {
  return table(
    [
      { label: 'Step', cell: (e) => show(e.step) },
      { label: 'Entity', cell: (e) => show(e.entity) },
      { label: 'External id', cell: (e) => h('code', null, show(e.external_id)) },
      { label: 'Message', cell: (e) => show(e.message) },
      { label: 'Seen', num: true, cell: (e) => num(e.occurrences) },
      { label: 'First seen', cell: (e) => time(e.created_at) },
      { label: 'Resolved', cell: (e) => (e.resolved_at ? time(e.resolved_at) : badge('open')) },
    ],
    errors,
    { empty: 'No item errors.' },
  );
}
