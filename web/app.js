// The page every node serves at `/`: a search bar that is deorch's command
// line. What is typed goes to the node (`POST /v1/command`), which parses
// it; the page shows the plan, the equivalent CLI command, suggestions and
// results, and runs a plan that changes something on Enter. Login is a
// Bitcoin key kept in this browser (localStorage): the page signs the
// node's challenge (BIP-137) here and sends only the signature.
//
// Plain DOM code, no framework, no HTML parsing (the CSP forbids inline code
// and the page builds every element with `el`).

import { secp256k1, sha256, ripemd160, createBase58check, bech32, base64 } from './crypto.js';

// ---------------------------------------------------------------- keys

const base58check = createBase58check(sha256);
const utf8 = new TextEncoder();
const KEY_STORE = 'deorch.key';
const LOGGED_OUT = 'deorch.loggedOut';

/** A key from WIF: {secret, compressed, testnet}; throws with a reason. */
function decodeWif(text) {
  let bytes;
  try {
    bytes = base58check.decode(text.trim());
  } catch {
    throw new Error('not a WIF key (bad characters or checksum)');
  }
  const version = bytes[0];
  if (version !== 0x80 && version !== 0xef) {
    throw new Error('not a WIF key (version byte ' + version + ')');
  }
  let compressed;
  if (bytes.length === 34 && bytes[33] === 0x01) compressed = true;
  else if (bytes.length === 33) compressed = false;
  else throw new Error('not a WIF key (length ' + bytes.length + ')');
  const secret = bytes.slice(1, 33);
  if (!secp256k1.utils.isValidSecretKey(secret)) throw new Error('the key is out of range');
  return { secret, compressed, testnet: version === 0xef };
}

/** WIF of a compressed key. */
function encodeWif(secret, testnet) {
  const bytes = new Uint8Array(34);
  bytes[0] = testnet ? 0xef : 0x80;
  bytes.set(secret, 1);
  bytes[33] = 0x01;
  return base58check.encode(bytes);
}

const hash160 = (bytes) => ripemd160(sha256(bytes));

/** The human-readable part of bech32 addresses on the cluster's network. */
function hrpFor(key) {
  if (!key.testnet) return 'bc';
  return state.cluster && state.cluster.startsWith('bcrt1') ? 'bcrt' : 'tb';
}

/**
 * The address a key logs in as: native segwit (P2WPKH, `bc1q…`) for a
 * compressed key, as `deorch key address` prints it and as AccessPolicies
 * name users; P2PKH for an old uncompressed key (it has no segwit address).
 */
function addressOf(key) {
  const pub = secp256k1.getPublicKey(key.secret, key.compressed);
  const h = hash160(pub);
  if (key.compressed) {
    return bech32.encode(hrpFor(key), [0, ...bech32.toWords(h)]);
  }
  const payload = new Uint8Array(21);
  payload[0] = key.testnet ? 0x6f : 0x00;
  payload.set(h, 1);
  return base58check.encode(payload);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function varint(n) {
  if (n < 0xfd) return Uint8Array.of(n);
  if (n <= 0xffff) return Uint8Array.of(0xfd, n & 0xff, n >>> 8);
  return Uint8Array.of(0xfe, n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24);
}

/**
 * A Bitcoin signed message (BIP-137) of `text`: the 65-byte compact
 * recoverable signature of SHA256(SHA256("\x18Bitcoin Signed Message:\n"
 * ‖ varint(len) ‖ text)), header 31 + recovery id for a compressed key
 * (27 + it for an uncompressed one), base64.
 */
function signMessage(key, text) {
  const message = utf8.encode(text);
  const digest = sha256(sha256(concat(utf8.encode('\x18Bitcoin Signed Message:\n'), varint(message.length), message)));
  const rec = secp256k1.sign(digest, key.secret, { prehash: false, format: 'recovered' });
  const sig = new Uint8Array(65);
  sig[0] = (key.compressed ? 31 : 27) + rec[0];
  sig.set(rec.subarray(1), 1);
  return base64.encode(sig);
}

function storedKey() {
  const wif = localStorage.getItem(KEY_STORE);
  if (!wif) return null;
  try {
    return decodeWif(wif);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- DOM

const $ = (id) => document.getElementById(id);

/** An element with attributes (`class`, `id`, any attribute) and children. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    e.setAttribute(k === 'className' ? 'class' : k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const state = {
  cluster: null,
  node: null,
  address: null,
  /** The last answer shown: {q, plan, results, suggestions}. */
  shown: null,
  seq: 0,
  abort: null,
  timer: null,
  running: false,
  events: null,
  eventsRetry: 1000,
  eventsTimer: null,
  refreshTimer: null,
  suggestions: [],
  active: -1,
};

function setStatus(node, text, isError) {
  node.textContent = text;
  node.classList.toggle('err', Boolean(isError));
}

// ---------------------------------------------------------------- HTTP

/** `fetch` answering {status, body} with the body parsed as JSON if it is. */
async function call(method, path, body, signal) {
  const init = { method, credentials: 'same-origin', signal, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: r.status, ok: r.ok, body: json, text };
}

function reason(r) {
  if (r.body && r.body.error) return r.body.error + (r.body.code ? ' (' + r.body.code + ')' : '');
  return 'HTTP ' + r.status + (r.text ? ': ' + r.text.slice(0, 200) : '');
}

// ---------------------------------------------------------------- login

function showLogin(message, isError) {
  closeEvents();
  state.address = null;
  $('session').hidden = true;
  $('console').hidden = true;
  $('login').hidden = false;
  const key = storedKey();
  $('stored').hidden = !key;
  if (key) $('stored-address').textContent = addressOf(key);
  setStatus($('login-status'), message || '', isError);
}

function showConsole(address) {
  localStorage.removeItem(LOGGED_OUT);
  state.address = address;
  $('who').textContent = address;
  $('login').hidden = true;
  $('password-form').hidden = true;
  $('backup').hidden = true;
  $('password').value = '';
  $('session').hidden = false;
  $('console').hidden = false;
  openEvents();
  const q = $('q');
  q.focus();
  if (q.value.trim()) preview(q.value.trim());
}

/** Log in with `key` (a level-2 `password` when the node asked for one). */
async function login(key, password) {
  const status = $('login-status');
  setStatus(status, 'Signing the challenge…');
  try {
    const c = await call('GET', '/v1/auth/challenge');
    if (!c.ok) return setStatus(status, 'No challenge: ' + reason(c), true);
    const address = addressOf(key);
    const body = { address, signature: signMessage(key, c.body.challenge), challenge: c.body.challenge };
    if (password) body.password = password;
    const r = await call('POST', '/v1/auth/login', body);
    if (r.ok) return showConsole(r.body.address || address);
    const code = r.body && r.body.code;
    if (code === 'PasswordRequired') {
      $('password-form').hidden = false;
      $('password').focus();
      return setStatus(status, 'This address also needs its directory password (level 2).');
    }
    if (code === 'NotAuthorised') {
      return setStatus(status, 'Signature accepted, but this address may not log in: ' + r.body.error, true);
    }
    setStatus(status, 'Login refused: ' + reason(r), true);
  } catch (e) {
    setStatus(status, 'Login failed: ' + e.message, true);
  }
}

function setupLogin() {
  $('import-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('wif');
    let key;
    try {
      key = decodeWif(input.value);
    } catch (e) {
      input.setAttribute('aria-invalid', 'true');
      return setStatus($('login-status'), 'That key cannot be used: ' + e.message, true);
    }
    input.removeAttribute('aria-invalid');
    localStorage.setItem(KEY_STORE, input.value.trim());
    input.value = '';
    $('backup').hidden = true;
    login(key);
  });
  $('generate').addEventListener('click', () => {
    const testnet = Boolean(state.cluster) && !state.cluster.startsWith('bc1') && !/^[13]/.test(state.cluster);
    const wif = encodeWif(secp256k1.utils.randomSecretKey(), testnet);
    localStorage.setItem(KEY_STORE, wif);
    const key = decodeWif(wif);
    $('backup-wif').textContent = wif;
    $('backup').hidden = false;
    $('stored').hidden = false;
    $('stored-address').textContent = addressOf(key);
    login(key);
  });
  $('login-stored').addEventListener('click', () => {
    const key = storedKey();
    if (key) login(key);
  });
  $('forget').addEventListener('click', () => {
    localStorage.removeItem(KEY_STORE);
    $('backup').hidden = true;
    showLogin('The key is no longer kept in this browser.');
    $('wif').focus();
  });
  $('password-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = storedKey();
    if (key) login(key, $('password').value);
  });
  $('logout').addEventListener('click', logout);
}

/**
 * Log out. The session cookie is HttpOnly (the page cannot touch it): a
 * node with `POST /v1/auth/logout` clears it; otherwise the page forgets
 * the session and stays logged out until the next login, and the cookie
 * lapses at its expiry.
 */
async function logout() {
  try {
    await call('POST', '/v1/auth/logout');
  } catch {
    // The page forgets the session either way.
  }
  localStorage.setItem(LOGGED_OUT, '1');
  clearAnswer();
  $('q').value = '';
  showLogin('Logged out.');
  ($('stored').hidden ? $('wif') : $('login-stored')).focus();
}

// ---------------------------------------------------------------- command line

function clearAnswer() {
  state.shown = null;
  $('plan').hidden = true;
  $('applied').hidden = true;
  $('q-error').hidden = true;
  $('q').removeAttribute('aria-invalid');
  $('results').replaceChildren();
  setStatus($('results-status'), '');
  setSuggestions([]);
}

/**
 * Ask the node about `q` without running it and show the answer; resolves
 * to the answer shown, or null (refused, or overtaken by newer typing).
 */
async function preview(q) {
  if (state.abort) state.abort.abort();
  const abort = new AbortController();
  state.abort = abort;
  const seq = ++state.seq;
  let r;
  try {
    r = await call('POST', '/v1/command', { q, run: false }, abort.signal);
  } catch (e) {
    if (e.name !== 'AbortError' && seq === state.seq) setStatus($('results-status'), 'The node did not answer: ' + e.message, true);
    return null;
  }
  if (seq !== state.seq) return null;
  return show(q, r);
}

/** Run `q` (a plan that changes something) and show what was applied. */
async function run(q) {
  state.running = true;
  if (state.abort) state.abort.abort();
  const seq = ++state.seq;
  setStatus($('results-status'), 'Applying…');
  try {
    const r = await call('POST', '/v1/command', { q, run: true });
    const shown = show(q, r, seq !== state.seq);
    if (shown && r.body.applied) showApplied(r.body.applied);
    if (shown && state.shown && state.shown.q === q) {
      // Done: Enter asks the node again rather than applying twice.
      state.shown.applied = true;
      $('plan-changes').textContent = 'Applied';
    }
    $('q').select();
  } catch (e) {
    setStatus($('results-status'), 'The node did not answer: ' + e.message, true);
  } finally {
    state.running = false;
  }
}

/** Show the node's answer `r` to `q`; `stale`: only what was applied. */
function show(q, r, stale) {
  if (r.status === 401) {
    showLogin('The session has ended: log in again. (' + reason(r) + ')', true);
    return null;
  }
  const body = r.body || {};
  if (r.status === 400 && body.code === 'Parse') {
    showParseError(q, body);
    return null;
  }
  if (!r.ok) {
    $('plan').hidden = true;
    $('q-error').hidden = true;
    const what = r.status === 403 ? 'Not allowed: ' : r.status === 501 ? 'This node does not run commands yet: ' : 'Refused: ';
    setStatus($('results-status'), what + reason(r), true);
    $('results').replaceChildren();
    setSuggestions(body.suggestions || []);
    return null;
  }
  if (stale) return body;
  state.shown = { q, plan: body.plan, results: body.results || [], suggestions: body.suggestions || [] };
  $('q-error').hidden = true;
  $('q').removeAttribute('aria-invalid');
  $('applied').hidden = true;
  showPlan(body.plan);
  showResults(q, state.shown.results, body.plan && body.plan.changes);
  setSuggestions(state.shown.suggestions);
  return body;
}

function showParseError(q, body) {
  const col = Math.max(1, Math.min(Number(body.column) || 1, q.length + 1));
  const box = $('q-error');
  box.replaceChildren(
    // The node's message may name the column itself: said once.
    el('p', {}, 'Column ' + col + ': ' + String(body.error || 'cannot parse this').replace(/^column \d+:\s*/i, '')),
    el('pre', { 'aria-hidden': 'true' }, el('code', {}, q + '\n' + ' '.repeat(col - 1) + '^')),
  );
  box.hidden = false;
  $('q').setAttribute('aria-invalid', 'true');
  $('plan').hidden = true;
  $('applied').hidden = true;
  state.shown = null;
  setSuggestions(body.suggestions || []);
}

function showPlan(plan) {
  if (!plan) {
    $('plan').hidden = true;
    return;
  }
  $('plan-summary').textContent = plan.summary || plan.verb || '';
  const badge = $('plan-changes');
  badge.textContent = plan.changes ? 'Changes the cluster: Enter applies it' : 'Read-only';
  badge.className = 'badge ' + (plan.changes ? 'changes' : 'readonly');
  $('plan-cli').textContent = plan.cli || '';
  const manifest = $('plan-manifest');
  manifest.hidden = !plan.manifest;
  $('plan-manifest-text').textContent = plan.manifest || '';
  $('plan').dataset.verb = plan.verb || '';
  $('plan').hidden = false;
}

/** The result cards; `quiet`: say nothing when there are none (a plan). */
function showResults(q, results, quiet) {
  const list = $('results');
  list.replaceChildren(
    ...results.map((r) => {
      const name = r.namespace ? r.namespace + '/' + r.name : r.name;
      const meta = [];
      if (r.phase) meta.push('phase ', el('strong', {}, r.phase));
      if (r.node) meta.push(meta.length ? ' · node ' : 'node ', el('strong', {}, r.node));
      return el(
        'li',
        { className: 'card', 'data-kind': r.kind, 'data-name': r.name },
        el('h3', {}, el('span', { className: 'kind' }, r.kind || ''), name || ''),
        meta.length ? el('p', { className: 'meta' }, meta) : null,
        r.detail ? el('p', { className: 'detail' }, r.detail) : null,
        r.cli ? el('code', {}, r.cli) : null,
      );
    }),
  );
  const n = results.length;
  if (n === 0 && quiet) return setStatus($('results-status'), '');
  setStatus($('results-status'), n === 0 ? 'No results for “' + q + '”.' : n + (n === 1 ? ' result' : ' results') + ' for “' + q + '”.');
}

function showApplied(applied) {
  const items = applied.map((a) => {
    if (a && typeof a === 'object' && a.object) {
      const gen = a.generation !== undefined ? ', generation ' + a.generation : '';
      return el('li', {}, el('code', {}, a.object), ' ', (a.verdict || (a.changed ? 'Applied' : 'Unchanged')) + gen);
    }
    return el('li', {}, typeof a === 'string' ? a : JSON.stringify(a));
  });
  $('applied-list').replaceChildren(...items);
  $('applied').hidden = false;
  setStatus($('results-status'), 'Applied ' + applied.length + (applied.length === 1 ? ' change.' : ' changes.'));
}

// ---------------------------------------------------------------- suggestions

function setSuggestions(list) {
  state.suggestions = list.slice(0, 10);
  state.active = -1;
  const box = $('suggestions');
  box.replaceChildren(
    ...state.suggestions.map((s, i) => el('li', { id: 'suggestion-' + i, role: 'option', 'aria-selected': 'false' }, s)),
  );
  const open = state.suggestions.length > 0 && !$('console').hidden;
  box.hidden = !open;
  $('q').setAttribute('aria-expanded', String(open));
  $('q').removeAttribute('aria-activedescendant');
}

function moveActive(step) {
  const n = state.suggestions.length;
  if (!n) return;
  state.active = state.active < 0 ? (step > 0 ? 0 : n - 1) : (state.active + step + n) % n;
  const options = $('suggestions').children;
  for (let i = 0; i < options.length; i++) {
    options[i].setAttribute('aria-selected', String(i === state.active));
  }
  $('q').setAttribute('aria-activedescendant', 'suggestion-' + state.active);
  options[state.active].scrollIntoView({ block: 'nearest' });
}

/**
 * The line once suggestion `s` is taken: a suggestion that starts with the
 * words before the one being typed is a whole line; any other completes
 * the word being typed (or follows the line's trailing space).
 */
function complete(line, s) {
  const cut = line.search(/\S*$/);
  const head = line.slice(0, cut);
  if (head && s.startsWith(head.trimEnd())) return s;
  if (!head && s.includes(' ')) return s;
  return head + s;
}

function accept(i) {
  const q = $('q');
  q.value = complete(q.value, state.suggestions[i]);
  setSuggestions([]);
  q.focus();
  preview(q.value.trim());
}

// ---------------------------------------------------------------- keys on the bar

async function enter() {
  clearTimeout(state.timer);
  const q = $('q').value.trim();
  if (!q || state.running) return;
  const shown = state.shown && state.shown.q === q ? state.shown : null;
  if (shown && !shown.applied) {
    // The plan on show: run it, or ask again if it only reads.
    if (shown.plan && shown.plan.changes) await run(q);
    else await preview(q);
    return;
  }
  // Enter before the plan showed: the node plans, and a plan that changes
  // something runs, as the CLI would. Once applied, Enter only asks again.
  const answer = await preview(q);
  if (!shown && answer && answer.plan && answer.plan.changes) await run(q);
}

function setupCommandLine() {
  const q = $('q');
  q.addEventListener('input', () => {
    clearTimeout(state.timer);
    const text = q.value.trim();
    if (!text) {
      if (state.abort) state.abort.abort();
      state.seq++;
      return clearAnswer();
    }
    state.timer = setTimeout(() => preview(text), 100);
  });
  q.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      moveActive(ev.key === 'ArrowDown' ? 1 : -1);
    } else if (ev.key === 'Escape') {
      if (state.suggestions.length) setSuggestions([]);
    } else if (ev.key === 'Enter') {
      ev.preventDefault();
      if (state.active >= 0) accept(state.active);
      else enter();
    }
  });
  // The list shows while the bar has the focus.
  q.addEventListener('blur', () => {
    $('suggestions').hidden = true;
    q.setAttribute('aria-expanded', 'false');
  });
  q.addEventListener('focus', () => {
    const open = state.suggestions.length > 0;
    $('suggestions').hidden = !open;
    q.setAttribute('aria-expanded', String(open));
  });
  $('search').addEventListener('submit', (ev) => ev.preventDefault());
  $('suggestions').addEventListener('mousedown', (ev) => {
    const li = ev.target.closest('li[role=option]');
    if (!li) return;
    ev.preventDefault();
    accept(Number(li.id.slice('suggestion-'.length)));
  });
  $('copy-cli').addEventListener('click', async () => {
    const text = $('plan-cli').textContent;
    try {
      await navigator.clipboard.writeText(text);
      setStatus($('results-status'), 'Copied: ' + text);
    } catch {
      const range = document.createRange();
      range.selectNodeContents($('plan-cli'));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      setStatus($('results-status'), 'Selected the command: copy it with Ctrl+C.');
    }
  });
}

// ---------------------------------------------------------------- live updates

/**
 * Server-sent events: each `change` (or `lagged`) re-asks the node the query on show,
 * when it is read-only (a plan that changes something is not run again).
 * A refused or dropped stream is opened again with backoff.
 */
function openEvents() {
  closeEvents();
  const es = new EventSource('/v1/events');
  state.events = es;
  es.addEventListener('open', () => {
    state.eventsRetry = 1000;
    setLive('on');
  });
  // `lagged`: the node dropped events this stream was too slow for, so
  // something changed all the same.
  for (const name of ['change', 'lagged']) {
    es.addEventListener(name, () => {
      clearTimeout(state.refreshTimer);
      state.refreshTimer = setTimeout(refresh, 150);
    });
  }
  es.addEventListener('error', () => {
    setLive('off');
    if (es.readyState !== EventSource.CLOSED) return;
    state.events = null;
    state.eventsTimer = setTimeout(() => state.address && openEvents(), state.eventsRetry);
    state.eventsRetry = Math.min(state.eventsRetry * 2, 30000);
  });
}

function closeEvents() {
  clearTimeout(state.eventsTimer);
  if (state.events) state.events.close();
  state.events = null;
  setLive('off');
}

function setLive(on) {
  const live = $('live');
  live.dataset.state = on;
  live.textContent = on === 'on' ? 'Live' : 'Live updates off';
}

function refresh() {
  const s = state.shown;
  if (!s || !s.plan || s.plan.changes || state.running) return;
  if ($('q').value.trim() !== s.q) return;
  preview(s.q);
}

// ---------------------------------------------------------------- start

async function start() {
  setupLogin();
  setupCommandLine();
  try {
    const c = await call('GET', '/v1/cluster');
    if (c.ok && c.body) {
      state.cluster = c.body.cluster;
      state.node = c.body.node;
      $('cluster-id').textContent = c.body.cluster;
      $('node-address').textContent = c.body.node;
    }
  } catch {
    // Shown as "…"; login says what fails.
  }
  if (!localStorage.getItem(LOGGED_OUT)) {
    try {
      const w = await call('GET', '/v1/auth/whoami');
      if (w.ok && w.body) return showConsole(w.body.address);
    } catch {
      // Not logged in.
    }
  }
  showLogin();
}

start();
