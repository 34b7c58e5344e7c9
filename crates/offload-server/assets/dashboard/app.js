// The offload dashboard. It talks to the same API as the CLI, with the same token, and it
// writes what the server sends into the page as text only (textContent, text nodes and
// attributes), never as markup.
'use strict';

const TOKEN_KEY = 'offload.token';
const SAMPLES = 150; // five minutes at one sample every two seconds
const MAX_EVENTS = 40;
const MAX_MOVES = 12;

const state = {
  token: null,
  who: null,
  lastEventId: null,
  stream: null,
  timers: [],
  refreshTimer: null,
  samples: [],
  monitor: null,
  queries: [],
  moves: [],
  names: new Map(),
};

const $ = (id) => document.getElementById(id);

// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

class ApiFailure extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === 'string') message = body.error;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiFailure(response.status, message);
}

async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 || (response.status === 403 && path !== '/v1/admin/audit')) {
      if (state.token && !path.startsWith('/v1/dashboard/')) signOut(error.message);
    }
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

const get = (path) => call('GET', path);
const post = (path, body) => call('POST', path, body === undefined ? {} : body);

// ---- signing in and out ----

function showSignIn(message) {
  $('main').hidden = true;
  $('signout').hidden = true;
  $('whoami').hidden = true;
  $('signin').hidden = false;
  const error = $('signin-error');
  error.hidden = !message;
  error.textContent = message || '';
  setStatus('', '');
  $('token').focus();
}

async function signIn(token) {
  state.token = token;
  let who;
  try {
    who = await get('/v1/whoami');
  } catch (e) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(e.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.who = who;
  $('signin').hidden = true;
  $('main').hidden = false;
  $('signout').hidden = false;
  const whoami = $('whoami');
  whoami.hidden = false;
  whoami.textContent = who.admin ? `${who.user} (admin)` : who.user;
  $('admin').hidden = !who.admin;
  refresh();
  pollMonitor();
  connect();
  state.timers.push(setInterval(pollMonitor, 2000));
  state.timers.push(setInterval(tick, 1000));
  state.timers.push(setInterval(refresh, 15000));
}

function signOut(message) {
  state.token = null;
  state.who = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.lastEventId = null;
  state.samples = [];
  state.queries = [];
  state.moves = [];
  state.names.clear();
  for (const id of ['events', 'moves', 'queries', 'containers', 'users', 'all-containers', 'nodes', 'audit', 'chart']) {
    $(id).replaceChildren();
  }
  showSignIn(message);
}

async function start() {
  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    $('token').value = '';
    if (token) signIn(token);
  });
  $('signout').addEventListener('click', () => signOut('Signed out.'));

  const link = /^#link=([A-Za-z0-9]{1,256})$/.exec(location.hash);
  if (location.hash) history.replaceState(null, '', location.pathname);
  if (link) {
    try {
      const session = await post('/v1/dashboard/session', { link: link[1] });
      await signIn(session.token);
    } catch (e) {
      showSignIn(e.message);
    }
    return;
  }
  if (location.hash.startsWith('#link=')) {
    showSignIn('This sign-in link is malformed; run `offload dashboard` for a new one.');
    return;
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) await signIn(saved);
  else showSignIn('');
}

function setStatus(text, kind) {
  const status = $('status');
  status.textContent = text;
  status.className = `status ${kind}`;
}

// ---- the event stream ----

async function connect() {
  if (!state.token) return;
  const controller = new AbortController();
  state.stream = controller;
  const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
  if (state.lastEventId !== null) headers['Last-Event-ID'] = String(state.lastEventId);
  try {
    const response = await fetch('/v1/events?follow=true&tail=100', {
      headers,
      signal: controller.signal,
      cache: 'no-store',
    });
    if (response.status === 400 && state.lastEventId !== null) {
      // The server no longer keeps that far back: start again from its recent events.
      state.lastEventId = null;
      refresh();
    } else if (response.status === 401 || response.status === 403) {
      signOut((await failure(response)).message);
      return;
    } else if (!response.ok) {
      throw await failure(response);
    } else {
      setStatus('live', 'live');
      await read(response.body.getReader());
    }
  } catch (_) {
    if (controller.signal.aborted) return;
  }
  if (state.stream !== controller || !state.token) return;
  setStatus('reconnecting…', 'down');
  setTimeout(connect, 2000);
}

async function read(reader) {
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      receive(block);
    }
  }
}

function receive(block) {
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') id = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return;
  let event;
  try {
    event = JSON.parse(data.join('\n'));
  } catch (_) {
    return;
  }
  if (id !== null && /^\d+$/.test(id)) state.lastEventId = Number(id);
  apply(event);
}

function apply(event) {
  if (event.name && event.container_id) state.names.set(event.container_id, event.name);
  addEvent(event);
  if (event.kind === 'move_phase' || event.kind === 'move_ended') trackMove(event);
  if (event.kind !== 'pressure_started' && event.kind !== 'pressure_ended') scheduleRefresh();
  else pollMonitor();
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, 150);
}

// ---- what the page shows ----

function describe(event) {
  const name = event.name || state.names.get(event.container_id) || event.container_id || '';
  switch (event.kind) {
    case 'container_created': return `${name} created from ${event.image}${event.node ? ` on ${event.node}` : ''}`;
    case 'container_started': return `${name} started at the ${event.location}: ${event.detail}`;
    case 'container_stopped': return `${name} stopped: ${event.detail}`;
    case 'container_removed': return `${name} removed`;
    case 'move_phase': return `${name} moving ${towards(event.direction)}: ${event.phase.replace(/_/g, ' ')}`;
    case 'move_ended': return `${name} move ${towards(event.direction)} ${event.outcome.replace(/_/g, ' ')}${event.reason ? `: ${event.reason}` : ''}`;
    case 'query_asked': return `asked about ${name}: ${event.reason}`;
    case 'query_closed': return `question about ${name} ${event.state}`;
    case 'pressure_started': return `${event.resource} pressure started${event.node ? ` on ${event.node}` : ''}`;
    case 'pressure_ended': return `${event.resource} pressure ended${event.node ? ` on ${event.node}` : ''}`;
    case 'agent_connected': return `agent connected from ${event.hostname}`;
    case 'agent_gone': return 'agent gone';
    case 'recovery_point_behind': return `${name}: the cloud lacks its last ${event.lag_secs} s of work`;
    case 'recovery_point_caught_up': return `${name}: the cloud has all of its work again`;
    default: return event.kind.replace(/_/g, ' ');
  }
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function addEvent(event) {
  const list = $('events');
  const who = state.who && state.who.admin && event.user ? `${event.user}: ` : '';
  list.prepend(el('li', { 'data-kind': event.kind },
    el('time', { datetime: new Date(event.at_ms).toISOString() }, clock(event.at_ms)),
    who + describe(event)));
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function trackMove(event) {
  let move = state.moves.find((m) => m.container_id === event.container_id && !m.outcome);
  if (!move) {
    move = { container_id: event.container_id, direction: event.direction, phases: [], outcome: null };
    state.moves.unshift(move);
    state.moves.length = Math.min(state.moves.length, MAX_MOVES);
  }
  move.name = event.name || move.name;
  if (event.kind === 'move_phase') {
    move.phases.push({ phase: event.phase, elapsed_ms: event.elapsed_ms });
  } else {
    move.outcome = event.outcome;
    move.reason = event.reason;
    move.timings = event.timings || {};
  }
  renderMoves();
}

// `to_edge` → "to the edge".
function towards(direction) {
  switch (direction) {
    case 'to_edge': return 'to the edge';
    case 'to_cloud': return 'to the cloud';
    case 'to_node': return 'to another node';
    default: return String(direction).replace(/_/g, ' ');
  }
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function renderMoves() {
  const list = $('moves');
  list.replaceChildren(...state.moves.map((move) => {
    const phases = move.phases.map((p) => `${p.phase.replace(/_/g, ' ')} at ${seconds(p.elapsed_ms)}`).join(' · ');
    const t = move.timings || {};
    const summary = move.outcome
      ? el('span', { class: `outcome-${move.outcome}` }, move.outcome.replace(/_/g, ' '))
      : el('span', {}, 'in progress');
    const detail = [];
    if (t.total_ms !== undefined) detail.push(`took ${seconds(t.total_ms)}`);
    if (t.downtime_ms !== undefined) detail.push(`down ${seconds(t.downtime_ms)}`);
    if (t.bytes) detail.push(`${bytes(t.bytes)} copied`);
    if (move.reason) detail.push(move.reason);
    return el('li', { 'data-container': move.container_id },
      el('strong', {}, move.name || move.container_id), ` ${towards(move.direction)}: `, summary,
      detail.length ? ` (${detail.join(', ')})` : '',
      el('div', { class: 'phases' }, phases));
  }));
  $('no-moves').hidden = state.moves.length > 0;
}

function cell(label, value, cls) {
  return el('td', { 'data-label': label, class: cls }, value === undefined || value === null || value === '' ? '–' : value);
}

function lag(container) {
  if (container.location !== 'edge') return 'in the cloud';
  if (container.sync_lag_secs === undefined || container.sync_lag_secs === null) return '–';
  return container.sync_lag_secs < 1 ? 'up to date' : `${Math.round(container.sync_lag_secs)} s behind`;
}

function stateText(container) {
  if (container.moving) return `moving ${towards(container.moving.direction)} (${container.moving.step.replace(/_/g, ' ')})`;
  return container.state;
}

function renderContainers(containers) {
  for (const c of containers) state.names.set(c.id, c.name);
  $('containers').replaceChildren(...containers.map((c) => el('tr', {
    'data-container': c.id, 'data-name': c.name, 'data-location': c.location,
  },
  cell('Name', c.name, 'name'),
  cell('Location', c.location, `location location-${c.location}`),
  cell('State', stateText(c), 'state'),
  cell('Image', c.image),
  cell('Node', c.node),
  cell('Generation', c.generation, 'generation'),
  cell('Recovery point', lag(c), 'lag'),
  cell('ID', el('code', {}, c.id)))));
  $('no-containers').hidden = containers.length > 0;
}

function renderQueries() {
  const pending = state.queries.filter((q) => q.state === 'pending');
  $('queries').replaceChildren(...pending.map((q) => {
    const accept = el('button', { type: 'button', class: 'accept primary', 'data-query': q.id }, 'Accept');
    const decline = el('button', { type: 'button', class: 'decline', 'data-query': q.id }, 'Decline');
    const outcome = el('p', { class: 'error', role: 'alert', hidden: true });
    const answer = async (verb) => {
      accept.disabled = true;
      decline.disabled = true;
      try {
        await post(`/v1/queries/${encodeURIComponent(q.id)}/${verb}`);
        scheduleRefresh();
      } catch (e) {
        outcome.hidden = false;
        outcome.textContent = e.message;
        accept.disabled = false;
        decline.disabled = false;
      }
    };
    accept.addEventListener('click', () => answer('accept'));
    decline.addEventListener('click', () => answer('decline'));
    const where = q.to_node ? `to node ${q.to_node}` : 'to your machine';
    return el('article', { class: 'query', 'data-query': q.id, 'aria-label': `Question about ${q.container_name}` },
      el('h3', {}, `Move ${q.container_name} ${where}?`),
      el('p', {}, q.reason),
      el('p', {}, `${bytes(q.move_bytes)} to copy. `,
        el('span', { class: 'countdown', 'data-deadline': q.deadline_at }, countdown(q.deadline_at))),
      el('div', { class: 'actions' }, accept, decline),
      outcome);
  }));
  $('no-queries').hidden = pending.length > 0;
}

function countdown(deadline) {
  const left = Math.max(0, Math.round(deadline - Date.now() / 1000));
  return left > 0 ? `${left} s left to answer` : 'time is up';
}

function tick() {
  for (const node of document.querySelectorAll('.countdown')) {
    node.textContent = countdown(Number(node.getAttribute('data-deadline')));
  }
}

async function refresh() {
  if (!state.token) return;
  try {
    const [containers, queries] = await Promise.all([get('/v1/containers'), get('/v1/queries')]);
    renderContainers(containers);
    state.queries = queries;
    renderQueries();
  } catch (e) {
    if (state.token) setStatus(e.message, 'down');
  }
  if (state.who && state.who.admin) refreshAdmin();
}

function ago(unix) {
  if (!unix) return 'never';
  const secs = Math.max(0, Math.round(Date.now() / 1000 - unix));
  if (secs < 90) return `${secs} s ago`;
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  return `${Math.round(secs / 3600)} h ago`;
}

async function refreshAdmin() {
  try {
    const [users, all, audit] = await Promise.all([
      get('/v1/admin/users'), get('/v1/admin/containers'), get('/v1/admin/audit?limit=50'),
    ]);
    $('users').replaceChildren(...users.map((u) => el('tr', { 'data-user': u.name },
      cell('User', u.name), cell('Role', u.admin ? 'admin' : 'user'),
      cell('Agent', u.agent || 'not connected'), cell('Containers', u.containers),
      cell('At the edge', u.at_edge), cell('Last seen', ago(u.last_seen_at)),
      cell('Status', u.disabled_at ? 'disabled' : 'active'))));
    $('all-containers').replaceChildren(...all.map((c) => el('tr', { 'data-container': c.id },
      cell('Name', c.name), cell('Owner', c.owner),
      cell('Location', c.location, `location location-${c.location}`),
      cell('State', stateText(c)), cell('Node', c.node), cell('Generation', c.generation),
      cell('ID', el('code', {}, c.id)))));
    $('audit').replaceChildren(...audit.slice().reverse().map((a) => el('tr', {},
      cell('When', clock(a.at_ms)), cell('Who', a.user || 'nobody'), cell('Action', a.action),
      cell('Target', a.target), cell('Outcome', a.outcome), cell('Detail', a.detail))));
  } catch (_) {
    // the next event or refresh tries again
  }
}

// ---- the load chart ----

async function pollMonitor() {
  if (!state.token) return;
  let view;
  try {
    view = await get('/v1/monitor');
  } catch (_) {
    return;
  }
  state.monitor = view;
  const sample = { at: Date.now() };
  for (const r of view.resources) sample[r.resource] = r;
  state.samples.push(sample);
  if (state.samples.length > SAMPLES) state.samples.shift();
  const banner = $('pressure');
  banner.hidden = !view.under_pressure;
  banner.textContent = view.under_pressure ? `The cloud is under pressure: ${view.reason}` : '';
  $('load').textContent = view.resources.map((r) =>
    `${r.resource} ${(r.usage * 100).toFixed(0)}% (forecast ${(r.forecast * 100).toFixed(0)}%, high ${(r.high * 100).toFixed(0)}%)`).join(' · ');
  drawChart();
  if (state.who && state.who.admin) renderNodes(view.nodes || []);
}

function renderNodes(nodes) {
  const pct = (x) => `${(x * 100).toFixed(0)}%`;
  $('nodes').replaceChildren(...nodes.map((n) => el('tr', { 'data-node': n.id },
    cell('Node', `${n.name} (${n.id.slice(0, 12)})`), cell('Schedulable', n.schedulable ? 'yes' : 'no'),
    cell('CPU', pct(n.cpu)), cell('Memory', pct(n.mem)),
    cell('Pressure', n.stuck ? 'yes, and no other node has room' : (n.under_pressure ? 'yes' : 'none')))));
  $('no-nodes').hidden = nodes.length > 0;
}

function drawChart() {
  const width = 600;
  const height = 180;
  const left = 34;
  const right = 30;
  const top = 8;
  const bottom = 20;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const x = (i) => left + (i / (SAMPLES - 1)) * plotWidth;
  const y = (fraction) => top + (1 - Math.min(1.1, Math.max(0, fraction)) / 1.1) * plotHeight;
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `CPU and memory use of the cloud over the last ${Math.round(SAMPLES * 2 / 60)} minutes`,
  });
  for (const level of [0, 0.5, 1]) {
    chart.append(svg('line', { class: 'grid', x1: left, x2: width - right, y1: y(level), y2: y(level) }));
    const label = svg('text', { class: 'axis', x: 2, y: y(level) + 4 });
    label.textContent = `${level * 100}%`;
    chart.append(label);
  }
  const offset = SAMPLES - state.samples.length;
  for (const resource of ['cpu', 'memory']) {
    const points = [];
    state.samples.forEach((s, i) => {
      if (s[resource]) points.push(`${x(offset + i).toFixed(1)},${y(s[resource].usage).toFixed(1)}`);
    });
    if (points.length === 0) continue;
    chart.append(svg('polyline', { class: `line ${resource}`, points: points.join(' ') }));
    const last = state.samples[state.samples.length - 1][resource];
    if (!last) continue;
    chart.append(svg('circle', {
      class: `now ${resource}`, cx: x(SAMPLES - 1), cy: y(last.usage), r: 3.5,
    }));
    chart.append(svg('line', {
      class: `high ${resource}`, x1: left, x2: width - right, y1: y(last.high), y2: y(last.high),
    }));
    chart.append(svg('line', {
      class: `forecast ${resource}`, x1: x(SAMPLES - 1), x2: width - 4,
      y1: y(last.usage), y2: y(last.forecast),
    }));
  }
  $('chart').replaceChildren(chart);
}

document.addEventListener('DOMContentLoaded', start);
