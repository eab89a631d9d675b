// Building the page: elements (text is never parsed as HTML), tables, and value formatting.
// Missing values show as DASH.

export const DASH = '–';

export const list = (v) => (Array.isArray(v) ? v : []);

export function show(v) {
  return v === null || v === undefined || v === '' ? DASH : String(v);
}

export function num(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v.toLocaleString('en') : DASH;
}

export function date(ts) {
  // Epoch seconds are accepted too (worker heartbeats come from Redis).
  const d = ts ? new Date(typeof ts === 'number' && ts < 1e12 ? ts * 1000 : ts) : null;
  return d && !Number.isNaN(d.getTime()) ? d : null;
}

export function time(ts) {
  const d = date(ts);
  if (!d) return DASH;
  const pad = (n) => String(n).padStart(2, '0');
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date().toDateString() === d.toDateString();
  return today ? hms : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
}

export function duration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return DASH;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

/** "12 s ago", "in 3m 05s". */
export function relative(ts) {
  const d = date(ts);
  if (!d) return DASH;
  const ms = d.getTime() - Date.now();
  if (Math.abs(ms) < 1000) return 'just now';
  return ms >= 0 ? `in ${duration(ms)}` : `${duration(-ms)} ago`;
}

/** Time between two timestamps, or from `from` until now while `to` is missing. */
export function span(from, to) {
  const a = date(from);
  if (!a) return DASH;
  const b = date(to) || new Date();
  return duration(b.getTime() - a.getTime());
}

export function every(secs) {
  if (typeof secs !== 'number' || secs <= 0) return DASH;
  if (secs % 86400 === 0) return `every ${secs / 86400} d`;
  if (secs % 3600 === 0) return `every ${secs / 3600} h`;
  if (secs % 60 === 0) return `every ${secs / 60} min`;
  return `every ${secs} s`;
}

// Run ids are UUIDv7: the first digits are a timestamp, shared by runs created together.
export const shortId = (id) => (id ? String(id).slice(-8) : DASH);

/** Builds an element; children are nodes or text (never parsed as HTML). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const $ = (sel) => document.querySelector(sel);

export function fill(target, ...nodes) {
  const el = typeof target === 'string' ? $(target) : target;
  el.replaceChildren(...nodes.flat().filter(Boolean));
}

export function badge(status) {
  const s = show(status);
  return h('span', { class: `badge s-${s.replace(/[^a-z_]/g, '')}` }, s);
}

/**
 * A table: `columns` are `{ label, cell(row), num? }`; `rowProps(row)` adds attributes to a row.
 * `empty` is shown instead when there are no rows; `null` rows mean "not loaded".
 */
export function table(columns, rows, { empty = 'None.', rowProps, foot } = {}) {
  if (rows === null) return h('p', { class: 'muted' }, 'Loading…');
  if (!rows.length) return h('p', { class: 'muted empty' }, empty);
  const cls = (c) => (c.num ? 'num' : null);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { class: cls(c) }, c.label)))),
      h(
        'tbody',
        null,
        rows.map((r) => h('tr', rowProps ? rowProps(r) : null, columns.map((c) => h('td', { class: cls(c) }, c.cell(r))))),
      ),
      foot ? h('tfoot', null, h('tr', null, columns.map((c) => h('td', { class: cls(c) }, foot(c))))) : null,
    ),
  );
}

export function actionButton(action, label, onclick, cls) {
  return h('button', { type: 'button', class: cls || 'small', dataset: { action }, onclick }, label);
}
