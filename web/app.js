// The page every node serves at `/`: a search bar that is deorch's command
// line. What is typed goes to the node (`POST /v1/command`), which parses
// it; the page shows the plan, the equivalent CLI command, suggestions and
// results, and runs a plan that changes something on Enter. The URL
// holds the command line (`?q=vm%20web1`, as `deorch url` prints it): a
// link opens that view, after the login if need be, and never runs a
// change by itself. Action buttons (beside the bar, on each VM's card)
// write their command in the bar, so the plan and the CLI command show
// before Enter runs it. Login is a Bitcoin key kept in this browser
// (localStorage): the page signs the node's challenge (BIP-137) here and
// sends only the signature; or an external wallet signs the challenge the
// page shows and the user pastes the signature back. A level-2 policy
// adds a directory password. A session moves to another node's page as a
// hand-over token in that page's URL fragment (`#adopt=TOKEN`), which the
// other page posts to its node and drops from its URL at once.
//
// Plain DOM code, no framework, no HTML parsing (the CSP forbids inline code
// and the page builds every element with `el`).

// ---------------------------------------------------------------- keys

/**
 * The crypto the login signs with (`crypto.js`: noble and scure, 52 KB),
 * loaded when a key is needed: a page whose session is still good never
 * loads it. Every function of this section needs it loaded (`C`).
 */
let C = null;
let cryptoLoading = null;
function needCrypto() {
  cryptoLoading =
    cryptoLoading ||
    import('./crypto.js').then((m) => {
      C = { ...m, base58check: m.createBase58check(m.sha256) };
      return C;
    });
  return cryptoLoading;
}

const utf8 = new TextEncoder();
const KEY_STORE = 'deorch.key';
const LOGGED_OUT = 'deorch.loggedOut';

/** A key from WIF: {secret, compressed, testnet}; throws with a reason. */
function decodeWif(text) {
  let bytes;
  try {
    bytes = C.base58check.decode(text.trim());
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
  if (!C.secp256k1.utils.isValidSecretKey(secret)) throw new Error('the key is out of range');
  return { secret, compressed, testnet: version === 0xef };
}

/** WIF of a compressed key. */
function encodeWif(secret, testnet) {
  const bytes = new Uint8Array(34);
  bytes[0] = testnet ? 0xef : 0x80;
  bytes.set(secret, 1);
  bytes[33] = 0x01;
  return C.base58check.encode(bytes);
}

const hash160 = (bytes) => C.ripemd160(C.sha256(bytes));

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
  const pub = C.secp256k1.getPublicKey(key.secret, key.compressed);
  const h = hash160(pub);
  if (key.compressed) {
    return C.bech32.encode(hrpFor(key), [0, ...C.bech32.toWords(h)]);
  }
  const payload = new Uint8Array(21);
  payload[0] = key.testnet ? 0x6f : 0x00;
  payload.set(h, 1);
  return C.base58check.encode(payload);
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
  const digest = C.sha256(C.sha256(concat(utf8.encode('\x18Bitcoin Signed Message:\n'), varint(message.length), message)));
  const rec = C.secp256k1.sign(digest, key.secret, { prehash: false, format: 'recovered' });
  const sig = new Uint8Array(65);
  sig[0] = (key.compressed ? 31 : 27) + rec[0];
  sig.set(rec.subarray(1), 1);
  return C.base64.encode(sig);
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
  /** The last answer shown: {q, plan, results, suggestions, applied}. */
  shown: null,
  /** Bumped by whatever makes an answer on its way stale (a run, a clear). */
  seq: 0,
  /** The question waiting for the one in flight: {text, resolve}. */
  next: null,
  asking: false,
  running: false,
  urlTimer: null,
  events: null,
  eventsRetry: 1000,
  eventsTimer: null,
  suggestions: [],
  active: -1,
};

function setStatus(node, text, isError) {
  node.textContent = text;
  node.classList.toggle('err', Boolean(isError));
}

// ---------------------------------------------------------------- HTTP

/** `fetch` answering {status, body} with the body parsed as JSON if it is. */
async function call(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
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

// ---------------------------------------------------------------- the URL

/**
 * `q` as a URL query value: everything but unreserved characters
 * percent-encoded, as `deorch url` writes it (a space is %20).
 */
function percent(q) {
  return encodeURIComponent(q).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/** The page's URL for the command line `q` (relative: this node). */
function urlFor(q) {
  return q ? '?q=' + percent(q) : location.pathname;
}

/** The command line in this page's URL (`?q=`), or ''. */
function urlQuery() {
  return (new URLSearchParams(location.search).get('q') || '').trim();
}

/**
 * Make the URL say `q`: at once with `push` (a new history entry, as a
 * link followed), else after typing pauses (one history entry rewritten:
 * the URL is always a link to what the page shows).
 */
function setUrl(q, push) {
  clearTimeout(state.urlTimer);
  const write = () => {
    const url = urlFor(q.trim());
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, '', url);
    else history.replaceState(null, '', url);
  };
  if (push) write();
  else state.urlTimer = setTimeout(write, 300);
}

// ---------------------------------------------------------------- login

/**
 * The login, with `message` under the key's controls (`isError`: red);
 * `alert`: a refusal shown first in the panel, announced at once (a
 * hand-over this node did not take).
 */
function showLogin(message, isError, alert) {
  const box = $('login-alert');
  box.replaceChildren(...(alert ? [el('p', {}, alert)] : []));
  box.hidden = !alert;
  closeEvents();
  state.address = null;
  $('session').hidden = true;
  $('console').hidden = true;
  $('login').hidden = false;
  // The kept key's address once the crypto is here (loaded now: a key
  // is about to be used, typed or made).
  $('stored').hidden = !localStorage.getItem(KEY_STORE);
  $('stored-address').textContent = '';
  needCrypto().then(
    () => {
      const key = storedKey();
      $('stored').hidden = !key;
      if (key) $('stored-address').textContent = addressOf(key);
    },
    (e) => setStatus($('login-status'), 'The page could not load its signing code: ' + e.message, true),
  );
  const pending = $('q').value.trim();
  $('pending').hidden = !pending;
  $('pending-query').textContent = pending;
  setStatus($('login-status'), message || '', isError);
}

function showConsole(address) {
  localStorage.removeItem(LOGGED_OUT);
  state.address = address;
  $('who').textContent = address;
  $('login').hidden = true;
  $('login-alert').hidden = true;
  resetWallet();
  $('password-form').hidden = true;
  $('backup').hidden = true;
  $('password').value = '';
  $('password').removeAttribute('aria-invalid');
  $('session').hidden = false;
  $('console').hidden = false;
  openEvents();
  const q = $('q');
  q.focus();
  // The query the URL (or the page before login) holds: asked, never run.
  if (q.value.trim()) preview(q.value.trim());
  else updateActions();
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
    if (code === 'PasswordRequired' || (code === 'Level2Refused' && password)) {
      const field = $('password');
      $('password-form').hidden = false;
      field.value = '';
      field.focus();
      if (code === 'PasswordRequired') {
        field.removeAttribute('aria-invalid');
        return setStatus(status, address + ' also needs its directory password (level 2).');
      }
      field.setAttribute('aria-invalid', 'true');
      return setStatus(status, 'The directory refused the password: ' + reason(r), true);
    }
    if (code === 'NotAuthorised') {
      return setStatus(status, 'Signature accepted, but this address may not log in: ' + r.body.error, true);
    }
    setStatus(status, 'Login refused: ' + reason(r), true);
  } catch (e) {
    setStatus(status, 'Login failed: ' + e.message, true);
  }
}

// ---------------------------------------------------------------- external wallet

/**
 * Login with a wallet outside the page (Electrum, Sparrow, a hardware
 * wallet): the page fetches the node's challenge and shows it, exactly,
 * to be signed there; the signature pasted back goes in the same login
 * request the page's own key makes. Each attempt uses the challenge up
 * (the node's nonce is single use, refused or not), so after a refusal
 * the page shows a new one to sign.
 */
const wallet = { challenge: null, timer: null };

function resetWallet() {
  clearTimeout(wallet.timer);
  wallet.challenge = null;
  $('wallet-sign').hidden = true;
  $('wallet-message').value = '';
  $('wallet-signature').value = '';
  $('wallet-signature').removeAttribute('aria-invalid');
  $('wallet-password').value = '';
  $('wallet-password-row').hidden = true;
  $('wallet-error').hidden = true;
  $('wallet-get').textContent = 'Get the message to sign';
  setStatus($('wallet-status'), '');
}

/** `hh:mm:ss` of a time `ms` (local clock). */
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

function walletError(text) {
  const box = $('wallet-error');
  box.replaceChildren(el('p', {}, text));
  box.hidden = false;
}

/**
 * Fetch a challenge and show it to be signed (the message field gets the
 * focus, its text selected: Ctrl+C copies it). Its lifetime counts from
 * now on this browser's clock (the node's lifetime, not its clock).
 */
async function walletChallenge() {
  clearTimeout(wallet.timer);
  let c;
  try {
    c = await call('GET', '/v1/auth/challenge');
  } catch (e) {
    c = { ok: false, status: 0, body: { error: e.message } };
  }
  if (!c.ok || !c.body || !c.body.challenge) {
    wallet.challenge = null;
    $('wallet-sign').hidden = true;
    setStatus($('wallet-status'), 'The node gave no message to sign: ' + reason(c), true);
    return false;
  }
  wallet.challenge = c.body.challenge;
  const ttl = Math.max(1, Number(c.body.expires) - Number(c.body.issued) || 60);
  const until = Date.now() + ttl * 1000;
  $('wallet-message').value = c.body.challenge;
  $('wallet-message').rows = c.body.challenge.split('\n').length;
  $('wallet-expiry').textContent =
    'Valid once, for ' + ttl + ' s (until ' + clock(until) + '): sign it in the wallet as the address above, then paste the signature below.';
  $('wallet-expiry').classList.remove('err');
  $('wallet-get').textContent = 'Get a new message';
  $('wallet-sign').hidden = false;
  wallet.timer = setTimeout(() => {
    const note = $('wallet-expiry');
    note.textContent = 'This message expired at ' + clock(until) + ': the node refuses a signature of it. Get a new message and sign that.';
    note.classList.add('err');
    setStatus($('wallet-status'), 'The message to sign has expired.', true);
  }, ttl * 1000);
  setStatus($('wallet-status'), '');
  const message = $('wallet-message');
  message.focus();
  message.select();
  return true;
}

/** What a refused login means for a wallet user, by the node's code. */
function walletRefusal(r, address) {
  const code = r.body && r.body.code;
  const said = reason(r);
  switch (code) {
    case 'BadSignature':
      return 'The node refused the signature: ' + said + '. Sign the message exactly as shown, every line, as ' + address + '.';
    case 'ChallengeExpired':
      return 'The message expired before the signature reached the node: ' + said + '.';
    case 'ChallengeRejected':
      return 'The node no longer knows that message (used already, or the node restarted): ' + said + '.';
    case 'WrongNetwork':
      return 'That address is on another network than this cluster: ' + said + '.';
    case 'NotAuthorised':
      return 'The signature is good, but this address may not log in: ' + said + '.';
    case 'Level2Refused':
      return 'The directory refused the password: ' + said + '.';
    default:
      return 'Login refused: ' + said + '.';
  }
}

async function walletLogin() {
  const address = $('wallet-address').value.trim();
  const field = $('wallet-signature');
  // Wallets may wrap a long signature: base64 has no blanks of its own.
  const signature = field.value.replace(/\s+/g, '');
  if (!address) {
    $('wallet-address').setAttribute('aria-invalid', 'true');
    $('wallet-address').focus();
    return walletError('Type the address the wallet signs with first.');
  }
  if (!wallet.challenge) return walletChallenge();
  if (!signature) {
    field.setAttribute('aria-invalid', 'true');
    field.focus();
    return walletError('Paste the signature the wallet made of the message above.');
  }
  const body = { address, signature, challenge: wallet.challenge };
  const password = $('wallet-password').value;
  if (!$('wallet-password-row').hidden && password) body.password = password;
  setStatus($('wallet-status'), 'Checking the signature…');
  let r;
  try {
    r = await call('POST', '/v1/auth/login', body);
  } catch (e) {
    r = { ok: false, status: 0, body: { error: e.message } };
  }
  if (r.ok) return showConsole((r.body && r.body.address) || address);
  const code = r.body && r.body.code;
  field.value = '';
  $('wallet-password').value = '';
  if (code === 'RateLimited' || r.status === 0) {
    // The challenge was not used: the same message can be signed again.
    setStatus($('wallet-status'), '');
    return walletError(r.status === 0 ? 'The node did not answer: ' + reason(r) + '.' : 'Login refused: ' + reason(r) + '.');
  }
  if (code === 'PasswordRequired' || code === 'Level2Refused') $('wallet-password-row').hidden = false;
  field.setAttribute('aria-invalid', code === 'PasswordRequired' ? 'false' : 'true');
  const why =
    code === 'PasswordRequired'
      ? address + ' also needs its directory password (level 2): sign the new message and enter the password with it.'
      : walletRefusal(r, address) + ' A new message is shown: sign that one.';
  if (await walletChallenge()) return walletError(why);
  // No new message: the part that held the error is hidden with it.
  setStatus($('wallet-status'), walletRefusal(r, address) + ' ' + $('wallet-status').textContent, true);
}

function setupWallet() {
  $('wallet-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const address = $('wallet-address');
    if (!address.value.trim()) {
      address.setAttribute('aria-invalid', 'true');
      return setStatus($('wallet-status'), 'Type your address first.', true);
    }
    address.removeAttribute('aria-invalid');
    $('wallet-error').hidden = true;
    $('wallet-signature').removeAttribute('aria-invalid');
    walletChallenge();
  });
  $('wallet-login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    walletLogin();
  });
  // The whole message at once: a click or Tab into it selects it.
  $('wallet-message').addEventListener('focus', () => $('wallet-message').select());
  $('wallet-copy').addEventListener('click', async () => {
    const message = $('wallet-message');
    try {
      await navigator.clipboard.writeText(message.value);
      setStatus($('wallet-status'), 'Copied the message: paste it in the wallet\u2019s “Sign message”.');
    } catch {
      message.focus();
      message.select();
      setStatus($('wallet-status'), 'Selected the message: copy it with Ctrl+C.');
    }
  });
}

// ---------------------------------------------------------------- hand-over

/**
 * The hand-over token in this page's URL (`#adopt=TOKEN`), taken out of
 * the URL at once (history.replaceState, so no history entry, reload or
 * bookmark has it). A fragment never reaches a server, so the token
 * travels only in the POST to /v1/auth/adopt.
 */
function takeAdoptToken() {
  if (!location.hash) return null;
  const token = new URLSearchParams(location.hash.slice(1)).get('adopt');
  if (token === null) return null;
  history.replaceState(history.state, '', location.pathname + location.search);
  return token;
}

/** Ask this node for a session from a hand-over `token`. */
function adopt(token) {
  return call('POST', '/v1/auth/adopt', { token }).catch((e) => ({ ok: false, status: 0, body: { error: e.message } }));
}

/** Logged in from the adopt answer `a`, if it is one; whether it was. */
function showAdopted(a) {
  if (!a.ok || !a.body || !a.body.address) return false;
  showConsole(a.body.address);
  if (!$('q').value.trim()) setStatus($('results-status'), 'Logged in on this node with the session handed over from the other page.');
  return true;
}

function adoptRefusal(a) {
  return 'This node refused the session handed over from another page: ' + reason(a) + '.';
}

/**
 * `#adopt=` put in the URL of a page already open (a link followed in
 * the same tab changes only the fragment): adopted the same way.
 */
function setupAdopt() {
  window.addEventListener('hashchange', async () => {
    const token = takeAdoptToken();
    if (token === null) return;
    const a = await adopt(token);
    if (showAdopted(a)) return;
    if (state.address) setStatus($('results-status'), adoptRefusal(a) + ' The session this page had is kept.', true);
    else showLogin('', false, adoptRefusal(a) + ' Log in here.');
  });
}

/**
 * A Satellite row's page, when it is another origin than this one and
 * the row names the node's address (a hand-over token names the one node
 * that may adopt it, and each is adopted once): an
 * https URL (http only from an http page: the token is not sent in clear
 * from a page that had TLS); anything else is not followed.
 */
function otherPage(r) {
  // The hand-over names the node to take it (its address): none, no button.
  if (r.kind !== 'Satellite' || typeof r.url !== 'string' || !r.url || !r.address) return null;
  let u;
  try {
    u = new URL(r.url);
  } catch {
    return null;
  }
  const scheme = u.protocol === 'https:' || (u.protocol === 'http:' && location.protocol === 'http:');
  if (!scheme || u.origin === location.origin) return null;
  u.hash = '';
  return u;
}

/**
 * "Open on NAME": the node hands this session over (a token for 60 s),
 * and the browser opens NAME's page with it in the fragment, where that
 * page adopts it: logged in there, as here.
 */
function nodeActions(r, target) {
  const note = el('p', { className: 'handover-note', role: 'status' });
  const open = el(
    'button',
    {
      type: 'button',
      className: 'open-node',
      'data-node': r.name,
      title: 'Hands this session over to ' + r.name + ' and opens its page, ' + target.href,
    },
    'Open on ' + r.name,
  );
  open.addEventListener('click', async () => {
    open.disabled = true;
    note.textContent = 'Handing the session over to ' + r.name + '…';
    let t;
    try {
      t = await call('POST', '/v1/auth/handover', { to: r.address });
    } catch (e) {
      t = { ok: false, status: 0, body: { error: e.message } };
    }
    if (t.ok && t.body && t.body.token) {
      const to = new URL(target.href);
      to.hash = 'adopt=' + encodeURIComponent(t.body.token);
      location.assign(to.href);
      return;
    }
    open.disabled = false;
    if (t.status === 401) return showLogin('The session has ended: log in again. (' + reason(t) + ')', true);
    note.textContent = 'Could not hand the session over: ' + reason(t);
    open.focus();
  });
  return el(
    'div',
    { className: 'actions', role: 'group', 'aria-label': 'Actions on node ' + r.name },
    open,
    el('span', { className: 'help' }, 'Page ', el('code', {}, target.href)),
    note,
  );
}

/** `f` as an event handler that first has the crypto loaded. */
function withCrypto(f) {
  return async (ev) => {
    if (ev.type === 'submit') ev.preventDefault();
    try {
      await needCrypto();
    } catch (e) {
      return setStatus($('login-status'), 'The page could not load its signing code: ' + e.message, true);
    }
    f(ev);
  };
}

function setupLogin() {
  $('import-form').addEventListener(
    'submit',
    withCrypto(() => {
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
    }),
  );
  $('generate').addEventListener(
    'click',
    withCrypto(() => {
      const testnet = Boolean(state.cluster) && !state.cluster.startsWith('bc1') && !/^[13]/.test(state.cluster);
      const wif = encodeWif(C.secp256k1.utils.randomSecretKey(), testnet);
      localStorage.setItem(KEY_STORE, wif);
      const key = decodeWif(wif);
      $('backup-wif').textContent = wif;
      $('backup').hidden = false;
      $('stored').hidden = false;
      $('stored-address').textContent = addressOf(key);
      login(key);
    }),
  );
  $('login-stored').addEventListener(
    'click',
    withCrypto(() => {
      const key = storedKey();
      if (key) login(key);
    }),
  );
  $('forget').addEventListener('click', () => {
    localStorage.removeItem(KEY_STORE);
    $('backup').hidden = true;
    showLogin('The key is no longer kept in this browser.');
    $('wif').focus();
  });
  $('password-form').addEventListener(
    'submit',
    withCrypto(() => {
      const key = storedKey();
      if (key) login(key, $('password').value);
    }),
  );
  $('logout').addEventListener('click', logout);
}

/**
 * Log out: the node clears the session cookie (HttpOnly: the page cannot
 * touch it), and the page stays logged out, reloads included, until the
 * next login.
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
  clearTimeout(state.urlTimer);
  history.replaceState(null, '', location.pathname);
  showLogin('Logged out.');
  ($('stored').hidden ? $('wif') : $('login-stored')).focus();
}

// ---------------------------------------------------------------- command line

function clearAnswer() {
  state.seq++;
  if (state.next) state.next.resolve(null);
  state.next = null;
  state.shown = null;
  $('plan').hidden = true;
  $('applied').hidden = true;
  $('q-error').hidden = true;
  $('q').removeAttribute('aria-invalid');
  $('results').replaceChildren();
  setStatus($('results-status'), '');
  setSuggestions([]);
  updateActions();
}

/**
 * Ask the node about `text` without running it and show the answer;
 * resolves to the answer shown, or null (refused, or overtaken by newer
 * typing). One question is in flight at a time: what is typed meanwhile
 * waits for it, only the newest line, so a slow node is asked once per
 * answer rather than once per key, and no answer to a line the bar no
 * longer holds is shown.
 */
function preview(text) {
  return new Promise((resolve) => {
    if (state.next) state.next.resolve(null);
    state.next = { text, resolve };
    if (!state.asking) ask();
  });
}

async function ask() {
  state.asking = true;
  while (state.next) {
    const { text, resolve } = state.next;
    state.next = null;
    const seq = ++state.seq;
    let r;
    try {
      r = await call('POST', '/v1/command', { q: text, run: false });
    } catch (e) {
      if (!state.next && seq === state.seq) setStatus($('results-status'), 'The node did not answer: ' + e.message, true);
      resolve(null);
      continue;
    }
    resolve(state.next || seq !== state.seq ? null : show(text, r));
  }
  state.asking = false;
}

/**
 * `approve NODE`: the owner signs the members policy's next generation
 * here (the key never leaves the page; with a wallet, the text to sign is
 * shown and the signature pasted back) and pushes it signed; the nodes
 * check it as any signed document.
 */
async function approveSigned(q, plan) {
  const sign = plan.sign;
  const key = storedKey();
  let signer;
  let signature;
  if (key) {
    try {
      await needCrypto();
    } catch (e) {
      return setStatus($('results-status'), 'The page could not load its signing code: ' + e.message, true);
    }
    signer = addressOf(key);
    signature = signMessage(key, sign.payload);
  } else {
    const field = $('approve-signature');
    signature = field ? field.value.replace(/\s+/g, '') : '';
    signer = state.address;
    if (!signature) {
      showWalletApproval(sign.payload);
      return setStatus($('results-status'), 'Sign the text shown under the plan in the wallet as ' + state.address + ', paste the signature, then press Enter.', true);
    }
  }
  const object = JSON.parse(JSON.stringify(sign.object));
  object.metadata.annotations = Object.assign({}, object.metadata.annotations, {
    'deorch.dev/signer': signer,
    'deorch.dev/signature': signature,
  });
  state.running = true;
  setStatus($('results-status'), 'Applying…');
  try {
    const r = await call('POST', '/v1/manifests', object);
    if (!r.ok) return setStatus($('results-status'), 'Refused: ' + reason(r), true);
    showApplied(r.body.applied || []);
    if (state.shown && state.shown.q === q) {
      state.shown.applied = true;
      $('plan-changes').textContent = 'Applied';
    }
  } catch (e) {
    setStatus($('results-status'), 'The node did not answer: ' + e.message, true);
  } finally {
    state.running = false;
  }
}

/** Under the plan: the text a wallet signs to approve, and where its signature goes. */
function showWalletApproval(payload) {
  if ($('approve-wallet')) return;
  $('plan').append(
    el(
      'div',
      { id: 'approve-wallet', className: 'wallet' },
      el('p', {}, 'Message to sign in the wallet, every character:'),
      el('pre', {}, el('code', {}, payload)),
      el('label', { for: 'approve-signature' }, 'Signature'),
      el('input', { id: 'approve-signature', type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    ),
  );
}

/**
 * Under `nodes`: the machines asking to join (`GET /v1/join`), each with
 * a button that writes `approve NAME` in the command line.
 */
async function showJoinRequests() {
  let r;
  try {
    r = await call('GET', '/v1/join');
  } catch {
    return;
  }
  const requests = (r.ok && r.body && r.body.requests) || [];
  if (!requests.length || !state.shown || state.shown.plan.verb !== 'nodes') return;
  const now = Date.now() / 1000;
  $('results').append(
    ...requests.map((j) =>
      el(
        'li',
        { className: 'card', 'data-kind': 'JoinRequest', 'data-name': j.name },
        el('h3', {}, el('span', { className: 'kind' }, 'Asks to join'), j.name),
        el('p', { className: 'detail' }, j.address + ', from ' + j.from + ', ' + Math.max(0, Math.round(now - j.time)) + ' s ago'),
        el(
          'div',
          { className: 'actions', role: 'group', 'aria-label': 'Join request of ' + j.name },
          el('button', { type: 'button', 'data-approve': j.name, title: 'Writes “approve ' + j.name + '” in the command line' }, 'Approve'),
        ),
      ),
    ),
  );
}

/** Run `q` (a plan that changes something) and show what was applied. */
async function run(q) {
  if (state.shown && state.shown.q === q && state.shown.plan && state.shown.plan.sign) {
    return approveSigned(q, state.shown.plan);
  }
  state.running = true;
  if (state.next) state.next.resolve(null);
  state.next = null;
  const seq = ++state.seq;
  setUrl(q);
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

/** Show the node's answer `r` to `text`; `stale`: only what was applied. */
function show(text, r, stale) {
  const q = text.trim();
  if (r.status === 401) {
    showLogin('The session has ended: log in again. (' + reason(r) + ')', true);
    return null;
  }
  const body = r.body || {};
  if (r.status === 400 && body.code === 'Parse') {
    showParseError(text, body);
    return null;
  }
  if (!r.ok) {
    state.shown = null;
    $('plan').hidden = true;
    $('q-error').hidden = true;
    const what = r.status === 403 ? 'Not allowed: ' : r.status === 501 ? 'This node does not run commands yet: ' : 'Refused: ';
    setStatus($('results-status'), what + reason(r), true);
    $('results').replaceChildren();
    setSuggestions(body.suggestions || []);
    updateActions();
    return null;
  }
  if (stale) return body;
  const shown = { q, plan: body.plan, results: body.results || [], suggestions: body.suggestions || [] };
  state.shown = shown;
  $('q-error').hidden = true;
  $('q').removeAttribute('aria-invalid');
  $('applied').hidden = true;
  showPlan(body.plan);
  showResults(q, shown.results, body.plan && body.plan.changes);
  setSuggestions(shown.suggestions);
  updateActions();
  const verb = body.plan && body.plan.verb;
  if (verb === 'nodes') showJoinRequests();
  if ((verb === 'get' || verb === 'console') && shown.results.length === 1 && shown.results[0].kind === 'VirtualMachine') {
    showVmStatus(shown, shown.results[0]);
    if (verb === 'console') offerConsole(shown.results[0]);
  }
  return body;
}

/**
 * `console VM`: a button that asks the node for a console ticket (only
 * when pressed: a new ticket replaces the last one) and opens the node's
 * console page with it. Only the node that runs the VM can unlock it.
 */
function offerConsole(r) {
  const card = $('results').querySelector('li.card[data-kind="VirtualMachine"]');
  if (!card) return;
  const note = el('p', { className: 'console-note', role: 'status' });
  const open = el('button', { type: 'button', className: 'open-console' }, 'Open the console of ' + nameOf(r));
  open.addEventListener('click', async () => {
    open.disabled = true;
    const path =
      '/v1/vms/' + encodeURIComponent(r.namespace || 'default') + '/' + encodeURIComponent(r.name) + '/console';
    let t;
    try {
      t = await call('POST', path);
    } catch (e) {
      t = { ok: false, body: { error: String(e) } };
    }
    open.disabled = false;
    if (t.ok && t.body && t.body.url) {
      location.assign(t.body.url + '&vm=' + encodeURIComponent(t.body.vm));
    } else {
      note.textContent = 'No console here: ' + reason(t);
    }
  });
  card.append(open, note);
}

/**
 * A line the node cannot parse: where and why, with a caret under the
 * column. A line that is only unfinished (the column past its end, as a
 * button leaves `revert web1 to `) is a hint to go on, not an error.
 */
function showParseError(text, body) {
  const q = text.trimEnd();
  const col = Math.max(1, Math.min(Number(body.column) || 1, text.length + 1));
  const message = String(body.error || 'cannot parse this').replace(/^column \d+:\s*/i, '');
  const unfinished = col > q.length;
  const box = $('q-error');
  box.className = unfinished ? 'hint' : 'error';
  box.replaceChildren(
    // The node's message may name the column itself: said once.
    el('p', {}, unfinished ? 'To go on: ' + message + '.' : 'Column ' + col + ': ' + message),
    unfinished ? null : el('pre', { 'aria-hidden': 'true' }, el('code', {}, q + '\n' + ' '.repeat(col - 1) + '^')),
  );
  box.hidden = false;
  if (unfinished) $('q').removeAttribute('aria-invalid');
  else $('q').setAttribute('aria-invalid', 'true');
  $('plan').hidden = true;
  $('applied').hidden = true;
  state.shown = null;
  setSuggestions(body.suggestions || []);
  updateActions();
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
  const wallet = $('approve-wallet');
  if (wallet) wallet.remove();
  $('plan').hidden = false;
}

/** How the command line names a result: `namespace/name` outside `default`. */
function nameOf(r) {
  return r.namespace && r.namespace !== 'default' ? r.namespace + '/' + r.name : r.name;
}

/** The query that shows result `r` alone (what its card links to). */
function queryOf(r) {
  switch (r.kind) {
    case 'VirtualMachine':
      return 'vm ' + nameOf(r);
    case 'Satellite':
      return 'node ' + r.name;
    case 'Spacesuit':
      return 'spacesuit ' + nameOf(r);
    default:
      // Other kinds have no verb of their own: a search for the name.
      return r.name;
  }
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
        el('h3', {}, el('span', { className: 'kind' }, r.kind || ''), el('a', { href: urlFor(queryOf(r)) }, name || '')),
        meta.length ? el('p', { className: 'meta' }, meta) : null,
        r.detail ? el('p', { className: 'detail' }, r.detail) : null,
        r.cli ? el('code', {}, r.cli) : null,
        r.kind === 'VirtualMachine' ? vmActions(r) : null,
        otherPage(r) ? nodeActions(r, otherPage(r)) : null,
      );
    }),
  );
  const n = results.length;
  if (n === 0 && quiet) return setStatus($('results-status'), '');
  setStatus($('results-status'), n === 0 ? 'No results for “' + q + '”.' : n + (n === 1 ? ' result' : ' results') + ' for “' + q + '”.');
}

/**
 * A VM's status as the node that runs it reports it (`GET /v1/objects`),
 * under its card: the conditions, the last revert, the consoles' native
 * addresses. For `vm NAME` and `console NAME`, which show one VM.
 */
async function showVmStatus(shown, r) {
  const path =
    '/v1/objects?kind=vm&namespace=' + encodeURIComponent(r.namespace || 'default') + '&name=' + encodeURIComponent(r.name);
  let reply;
  try {
    reply = await call('GET', path);
  } catch {
    return;
  }
  const record = reply.ok && reply.body && (reply.body.records || [])[0];
  const card = $('results').querySelector('li.card[data-kind="VirtualMachine"]');
  if (!record || !record.status || state.shown !== shown || !card) return;
  const st = record.status;
  const rows = [];
  if (st.lastRevert) {
    const [replica, generation] = String(st.lastRevert).split('@');
    rows.push(['Last revert', 'to replica ' + replica + (generation ? ' (generation ' + generation + ')' : '')]);
  }
  const c = st.console;
  if (c && c.host) {
    const at = [];
    if (c.vncPort) at.push('VNC ' + c.host + ':' + c.vncPort);
    if (c.spicePort) at.push('SPICE ' + c.host + ':' + c.spicePort);
    if (at.length) rows.push(['Console', at.join(' · ')]);
  }
  if (st.pendingRestart && st.pendingRestart.length) rows.push(['At next restart', st.pendingRestart.join(', ')]);
  for (const cond of st.conditions || []) {
    rows.push([cond.type, (cond.status === 'True' ? '' : 'not: ') + (cond.message || cond.reason || cond.status)]);
  }
  if (!rows.length) return;
  card.append(
    el(
      'dl',
      { className: 'status', 'aria-label': 'Status of ' + nameOf(r) },
      rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]),
    ),
  );
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

// ---------------------------------------------------------------- actions

const ACTIONS = {
  start: 'Start',
  stop: 'Stop',
  replica: 'Replica',
  revert: 'Revert…',
  relocate: 'Auto Relocate',
  console: 'Console',
};

/**
 * The command line an action button writes: for `vm` when there is one,
 * else the verb alone (the suggestions then list the VMs). Revert leaves
 * the replica to pick from the suggestions.
 */
function commandFor(verb, vm) {
  if (!vm) return verb + ' ';
  return verb === 'revert' ? 'revert ' + vm + ' to ' : verb + ' ' + vm;
}

function actionButton(verb, vm) {
  const line = commandFor(verb, vm).trim();
  return el(
    'button',
    { type: 'button', 'data-verb': verb, 'data-vm': vm, title: 'Writes “' + line + (verb === 'revert' ? ' …' : '') + '” in the command line' },
    ACTIONS[verb],
  );
}

/** The buttons on a VM's card: start or stop as its phase asks, and the rest. */
function vmActions(r) {
  const vm = nameOf(r);
  const up = r.phase === 'Running' || r.phase === 'Paused';
  const down = r.phase === 'Stopped' || r.phase === 'Failed';
  const verbs = Object.keys(ACTIONS).filter((v) => !(v === 'start' && up) && !(v === 'stop' && down));
  return el(
    'div',
    { className: 'actions', role: 'group', 'aria-label': 'Actions on VM ' + vm },
    verbs.map((v) => actionButton(v, vm)),
  );
}

/** The VM the answer on show is about (the only VM among its results). */
function contextVm() {
  const vms = state.shown ? state.shown.results.filter((r) => r.kind === 'VirtualMachine') : [];
  return vms.length === 1 ? nameOf(vms[0]) : null;
}

/** The buttons beside the command line act on the VM on show, if one. */
function updateActions() {
  const vm = contextVm();
  $('actions-label').textContent = vm ? 'Actions on VM ' + vm : 'Actions (then pick a VM)';
  for (const b of $('actions').querySelectorAll('button[data-verb]')) {
    const line = commandFor(b.dataset.verb, vm).trim();
    b.title = 'Writes “' + line + (b.dataset.verb === 'revert' || !vm ? ' …' : '') + '” in the command line';
    if (vm) b.dataset.vm = vm;
    else delete b.dataset.vm;
  }
}

/** Put `line` in the command line and ask the node: the plan shows, Enter runs it. */
function fill(line) {
  const q = $('q');
  q.value = line;
  q.focus();
  q.setSelectionRange(line.length, line.length);
  setUrl(line);
  preview(line);
}

function setupActions() {
  const onClick = (ev) => {
    const b = ev.target.closest('button[data-verb]');
    if (b) fill(commandFor(b.dataset.verb, b.dataset.vm));
  };
  $('actions').addEventListener('click', onClick);
  $('results').addEventListener('click', (ev) => {
    onClick(ev);
    const approve = ev.target.closest('button[data-approve]');
    if (approve) fill('approve ' + approve.dataset.approve);
    // A card's link: shown here (a new history entry), no reload.
    const a = ev.target.closest('a[href^="?q="]');
    if (!a || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    const q = new URLSearchParams(a.getAttribute('href').slice(1)).get('q') || '';
    $('q').value = q;
    $('q').focus();
    setUrl(q, true);
    preview(q);
  });
  // Back and forward: the query of that entry.
  window.addEventListener('popstate', () => {
    const q = urlQuery();
    $('q').value = q;
    if (!state.address) return;
    if (q) preview(q);
    else clearAnswer();
  });
}

// ---------------------------------------------------------------- suggestions

function setSuggestions(list) {
  state.suggestions = list.slice(0, 10);
  state.active = -1;
  const box = $('suggestions');
  box.replaceChildren(
    ...state.suggestions.map((s, i) => el('li', { id: 'suggestion-' + i, role: 'option', 'aria-selected': 'false' }, s)),
  );
  const open = state.suggestions.length > 0 && !$('console').hidden && document.activeElement === $('q');
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
  setUrl(q.value);
  preview(q.value.trimStart());
}

// ---------------------------------------------------------------- keys on the bar

async function enter() {
  const q = $('q').value.trim();
  if (!q || state.running) return;
  setUrl(q);
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
    // Sent as typed but for leading blanks: a trailing space asks for
    // the next word's completions.
    const text = q.value.trimStart();
    setUrl(text);
    if (!text.trim()) return clearAnswer();
    preview(text);
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
 * Server-sent events: each `change` (or `lagged`) re-asks the node the
 * query on show, when it is read-only (a plan that changes something is
 * not run again). A burst of changes costs one question in flight and one
 * after it (`preview` keeps only the newest). A refused or dropped stream
 * is opened again with backoff.
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
  for (const name of ['change', 'lagged']) es.addEventListener(name, refresh);
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
  // First of all: a hand-over token leaves the URL before anything runs.
  const token = takeAdoptToken();
  setupLogin();
  setupWallet();
  setupAdopt();
  setupCommandLine();
  setupActions();
  // A link to a query (`deorch url`, a card's link): kept through login.
  $('q').value = urlQuery();
  const loggedOut = localStorage.getItem(LOGGED_OUT);
  const whoami = () => (loggedOut ? null : call('GET', '/v1/auth/whoami').catch(() => null));
  const [c, first] = await Promise.all([
    call('GET', '/v1/cluster').catch(() => null),
    token === null ? whoami() : adopt(token),
  ]);
  const a = token === null ? null : first;
  if (c && c.ok && c.body) {
    state.cluster = c.body.cluster;
    state.node = c.body.node;
    $('cluster-id').textContent = c.body.cluster;
    $('node-address').textContent = c.body.node;
  }
  if (a && showAdopted(a)) return;
  const refused = a ? adoptRefusal(a) : '';
  const w = token === null ? first : await whoami();
  if (w && w.ok && w.body) {
    showConsole(w.body.address);
    if (refused) setStatus($('results-status'), refused + ' The session this node had is kept.', true);
    return;
  }
  showLogin('', false, refused ? refused + ' Log in here.' : '');
}

start();
