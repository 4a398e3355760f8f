// The browser console (console.html): the VM's screen in one of two
// viewers, each logged in with a console ticket's password.
//
// VNC: noVNC's RFB client (rfb.js, built by web/novnc/build.sh from the
// npm package) connected straight to the VM's console websocket on its
// node, wss://HOST:PORT/ (TLS with the node's certificate).
//
// SPICE, where the VM serves it: Debian's spice-html5 (spice-html5/,
// vendored unmodified by web/spice/build.sh) through this node's bridge,
// wss://THIS-NODE/console/spice/NS/NAME: QEMU's SPICE speaks plain TCP
// only, so the node carries the bytes (src/http/ws.rs). SPICE opens a
// websocket per channel (main, display, inputs, cursor), each one bridged.
//
// The link is /console.html#host=H&port=P&password=PW[&vm=NS/NAME], as
// `console VM` in the node's page and `deorch console VM` give it: a
// fragment, which the browser never sends anywhere. The password leaves
// the address bar and the history before anything else happens; a
// reload then finds no password and says how to get a new ticket (a
// ticket's password opens connections for 60 s only). With the VM's name
// the page also asks the node for the VM's status: the native clients'
// addresses show, and a VM with SPICE gets the VNC/SPICE switch. Each
// switch asks the node for a fresh ticket (the page's session cookie
// goes with it; the password comes back in the answer's body only).

const $ = (id) => document.getElementById(id);
const status = $('status');
const screens = { vnc: $('screen'), spice: $('spice-screen') };
const cad = $('cad');
const leave = $('disconnect');
const buttons = { vnc: $('use-vnc'), spice: $('use-spice') };

/** Show `text` in the live region, `state` for its colour. */
function say(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

/** The ticket in the fragment, its password already out of the URL. */
function takeTicket() {
  const params = new URLSearchParams(location.hash.slice(1));
  const password = params.get('password') ?? '';
  if (params.has('password')) {
    params.delete('password');
    const rest = params.toString();
    history.replaceState(history.state, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  }
  return { host: params.get('host') ?? '', port: params.get('port') ?? '', vm: params.get('vm') ?? '', password };
}

/** HOST as it goes in a URL (an IPv6 address in brackets), or null when
 * it is no host name or address. */
function urlHost(host) {
  if (/^[A-Za-z0-9.-]+$/.test(host)) return host;
  const v6 = host.replace(/^\[(.*)\]$/, '$1');
  if (/^[0-9A-Fa-f:.]+$/.test(v6) && v6.includes(':')) return `[${v6}]`;
  return null;
}

/** The page without a usable ticket: why, and how to get one. */
function noTicket(why) {
  say('failed', why);
  $('help').hidden = false;
  screens.vnc.hidden = true;
  screens.spice.hidden = true;
  document.querySelector('.actions').hidden = true;
  $('viewers').hidden = true;
}

/** NS and NAME of `vm` ("NS/NAME", or "NAME" in the default namespace). */
function vmParts(vm) {
  const i = vm.indexOf('/');
  return i < 0 ? ['default', vm] : [vm.slice(0, i), vm.slice(i + 1)];
}

/** The node's JSON answer to `method path` with this page's session. */
async function ask(method, path) {
  const r = await fetch(path, { method, credentials: 'same-origin', cache: 'no-store' });
  let body = {};
  try {
    body = await r.json();
  } catch {
    // Not JSON: the status says enough.
  }
  if (!r.ok) throw new Error(body.error ? `${body.error}${body.code ? ` (${body.code})` : ''}` : `HTTP ${r.status}`);
  return body;
}

/** A fresh console ticket for `vm` (it replaces the last one). */
function freshTicket(vm) {
  const [ns, name] = vmParts(vm);
  return ask('POST', `/v1/vms/${encodeURIComponent(ns)}/${encodeURIComponent(name)}/console`);
}

/**
 * The consoles' native addresses, for a VNC viewer or remote-viewer
 * beside the browser (the same ticket's password opens them).
 */
function showNative(c) {
  if (!c || !c.host) return;
  const host = urlHost(c.host) || c.host;
  const at = [];
  if (c.vncPort) at.push(`VNC ${host}:${c.vncPort}`);
  if (c.spicePort) at.push(`SPICE ${host}:${c.spicePort}`);
  if (!at.length) return;
  const native = $('native');
  native.textContent = `Native clients: ${at.join(' · ')} (a ticket's password opens them too).`;
  native.hidden = false;
}

/**
 * Let Chromium open a websocket to `https://WHERE/`: QEMU's TLS asks every
 * client for a certificate (it requests one even with verify-peer=off,
 * crypto/tlssession.c), and Chromium cancels a websocket's handshake when
 * a server asks and the browser has not yet decided which certificate to
 * give that host and port ("WebSocket opening handshake was canceled").
 * An ordinary request there decides it (none, when the browser holds no
 * client certificate): it fails, QEMU answering no HTTP, but the decision
 * stays for the websocket that follows. Other browsers need nothing; the
 * request is harmless to them. (The SPICE bridge is this page's own
 * origin, which asks for no certificate.)
 */
async function decideClientCertificate(where) {
  try {
    await fetch(`https://${where}/`, { mode: 'no-cors', credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' });
  } catch {
    // Expected: the websocket port serves no HTTP.
  }
}

/** The viewer on show: {kind, stop(), cad(), focus()}; `serial` tells a
 * live viewer's events from those of one already replaced. */
let viewer = null;
let serial = 0;

/** Make `kind` the viewer on show (its screen, its switch pressed). */
function show(kind) {
  for (const k of Object.keys(screens)) {
    screens[k].hidden = k !== kind;
    buttons[k].setAttribute('aria-pressed', String(k === kind));
  }
}

/** The buttons while a viewer is connected (or not). */
function connectedUi(on) {
  cad.disabled = !on;
  leave.disabled = !on;
  $('hint').hidden = !on;
}

/** The screen's canvas as the keyboard's target: reachable with Tab, named. */
function labelCanvas(canvas, label) {
  // The viewers hide the focus outline; the page shows where the keys go.
  canvas.style.removeProperty('outline');
  canvas.tabIndex = 0;
  canvas.setAttribute('role', 'application');
  canvas.setAttribute('aria-label', `Screen of ${label}: keys typed here go to the VM`);
}

/** What to run to come back, in the status lines. */
const again = (vm) => `run console ${vm || 'VM'} again for a new link`;

async function connectVnc({ host, port, vm, password }) {
  const me = ++serial;
  const where = `${host}:${port}`;
  const url = `wss://${where}/`;
  const label = vm || where;
  show('vnc');
  say('connecting', `Connecting to ${url}…`);
  // noVNC is imported here, after the password left the URL: the bundle
  // awaits at its top level (its H.264 probe), and a static import would
  // hold this whole script, the password's removal included, back as long.
  const [{ RFB }] = await Promise.all([import('./rfb.js'), decideClientCertificate(where)]);
  if (me !== serial) return;

  let rfb;
  try {
    rfb = new RFB(screens.vnc, url, { credentials: { password }, wsProtocols: ['binary'] });
  } catch (e) {
    noTicket(`Could not open ${url}: ${e.message}`);
    return;
  }
  // The VM's screen scaled to the window, never the VM's resolution
  // changed; the canvas is the keyboard's target, reachable with Tab.
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  const canvas = screens.vnc.querySelector('canvas');
  if (canvas) labelCanvas(canvas, label);

  let connected = false;
  let refused = null;
  let leaving = false;
  viewer = {
    kind: 'vnc',
    stop(why) {
      leaving = why || true;
      rfb.disconnect();
    },
    cad: () => rfb.sendCtrlAltDel(),
    focus: () => rfb.focus(),
  };
  rfb.addEventListener('connect', () => {
    if (me !== serial) return;
    connected = true;
    say('connected', `Connected to ${label} over VNC. Keys typed on its screen go to the VM.`);
    connectedUi(true);
    rfb.focus();
  });
  rfb.addEventListener('desktopname', (e) => {
    if (!vm && e.detail.name && me === serial) $('title').textContent = `Console of ${e.detail.name}`;
  });
  rfb.addEventListener('securityfailure', (e) => {
    refused = e.detail;
  });
  rfb.addEventListener('credentialsrequired', (e) => {
    refused = { reason: `it asks for ${e.detail.types.join(', ')}, and a console ticket has only a password` };
    rfb.disconnect();
  });
  rfb.addEventListener('disconnect', (e) => {
    if (me !== serial || leaving === 'switch') return;
    connectedUi(false);
    if (refused) {
      const reason = refused.reason ? ` (${refused.reason.trim()})` : '';
      say('failed', `The console refused the password${reason}. A ticket opens the console only within 60 s of being issued, and a newer ticket replaces it: ${again(vm)}.`);
    } else if (!connected) {
      say('failed', `Could not reach the console at ${url}: the VM may not run on that node any more, or this browser does not trust the node's certificate for ${host}. Run console ${vm || 'VM'} again for a new link.`);
    } else if (leaving) {
      say('disconnected', `Disconnected. To come back, ${again(vm)}.`);
    } else {
      say('failed', `The console closed the connection${e.detail.clean ? '' : ' unexpectedly'} (the VM stopped, or moved to another node?). Run console ${vm || 'VM'} again for a new link.`);
    }
  });
}

async function connectSpice({ vm, password }) {
  const me = ++serial;
  const [ns, name] = vmParts(vm);
  const url = `wss://${location.host}/console/spice/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  show('spice');
  screens.spice.replaceChildren();
  say('connecting', `Connecting to SPICE through this node (${url})…`);
  const SpiceHtml5 = await import('./spice-html5/main.js');
  if (me !== serial) return;

  let connected = false;
  let leaving = false;
  let sc;
  // spice-html5 adds the screen's canvas (and focuses it) once the
  // display channel has its first surface.
  const watch = new MutationObserver(() => {
    const canvas = screens.spice.querySelector('canvas');
    if (canvas && !canvas.hasAttribute('aria-label')) {
      labelCanvas(canvas, vm);
      if (me === serial && connected) canvas.focus();
    }
  });
  watch.observe(screens.spice, { childList: true, subtree: true });
  const ended = (state, text) => {
    watch.disconnect();
    if (me !== serial || leaving === 'switch') return;
    connectedUi(false);
    say(state, text);
  };
  viewer = {
    kind: 'spice',
    stop(why) {
      leaving = why || true;
      if (sc) sc.stop();
      ended('disconnected', `Disconnected. To come back, ${again(vm)}.`);
    },
    cad: () => SpiceHtml5.sendCtrlAltDel(sc),
    focus: () => {
      const canvas = screens.spice.querySelector('canvas');
      if (canvas) canvas.focus();
    },
  };
  try {
    sc = new SpiceHtml5.SpiceMainConn({
      uri: url,
      screen_id: 'spice-screen',
      password,
      onsuccess: () => {
        if (me !== serial) return;
        connected = true;
        // The main channel is up; spice-html5 drops keys until the inputs
        // channel is too, so "connected" waits for it (15 s at most).
        const since = Date.now();
        const poll = setInterval(() => {
          if (me !== serial || leaving) return clearInterval(poll);
          const ready = sc.inputs && sc.inputs.state === 'ready';
          if (!ready && Date.now() - since < 15_000) return;
          clearInterval(poll);
          say(
            'connected',
            ready
              ? `Connected to ${vm} over SPICE. Keys typed on its screen go to the VM.`
              : `Connected to ${vm} over SPICE, but its keyboard channel did not open: keys do not reach the VM.`,
          );
          connectedUi(true);
          viewer.focus();
        }, 50);
      },
      onerror: (e) => {
        if (leaving) return;
        // An Error from SPICE, or the websocket's bare error event (the
        // bridge refused, or the node is gone).
        const why = (e && e.message) || 'the websocket failed';
        leaving = 'error';
        try {
          sc.stop();
        } catch {
          // Half open: nothing more to close.
        }
        if (why === 'Permission denied.' || why === 'Bad password.') {
          ended('failed', `The console refused the password. A ticket opens the console only within 60 s of being issued, and a newer ticket replaces it: ${again(vm)}.`);
        } else if (!connected) {
          ended('failed', `Could not reach SPICE through this node (${why}): the VM may not run on this node, or your session may not open its console. Run console ${vm} again for a new link.`);
        } else {
          ended('failed', `The console closed the connection (${why}): the VM stopped, or moved to another node? Run console ${vm} again for a new link.`);
        }
      },
    });
  } catch (e) {
    ended('failed', `Could not open ${url}: ${e.message}`);
  }
}

/** Switch to viewer `kind` with a fresh ticket. */
async function switchTo(kind, vm) {
  if (viewer && viewer.kind === kind && !cad.disabled) return viewer.focus();
  if (viewer) viewer.stop('switch');
  viewer = null;
  serial++;
  connectedUi(false);
  show(kind);
  say('connecting', `Asking this node for a ticket for ${vm}…`);
  let t;
  try {
    t = await freshTicket(vm);
  } catch (e) {
    say('failed', `No console ticket for ${vm}: ${e.message}.`);
    return;
  }
  showNative({ host: t.host, vncPort: t.vncPort, spicePort: t.spicePort });
  if (kind === 'spice') return connectSpice({ vm, password: t.password });
  const host = urlHost(String(t.host || ''));
  if (!host || !t.websocketPort) return say('failed', `This node gave no VNC websocket for ${vm}.`);
  return connectVnc({ host, port: t.websocketPort, vm, password: t.password });
}

/** With the VM's name: its status (native addresses, SPICE or not). */
async function offerViewers(vm) {
  const [ns, name] = vmParts(vm);
  let c;
  try {
    const r = await ask('GET', `/v1/objects?kind=vm&namespace=${encodeURIComponent(ns)}&name=${encodeURIComponent(name)}`);
    c = r.records && r.records[0] && r.records[0].status && r.records[0].status.console;
  } catch {
    // A session that may open the console but not read the VM: the
    // ticket's VNC only.
    return;
  }
  showNative(c);
  if (c && c.spicePort) {
    $('viewers').hidden = false;
    for (const kind of Object.keys(buttons)) buttons[kind].addEventListener('click', () => switchTo(kind, vm));
  }
}

cad.addEventListener('click', () => {
  if (!viewer) return;
  viewer.cad();
  viewer.focus();
});
leave.addEventListener('click', () => {
  if (viewer) viewer.stop();
});
// Ctrl+] takes the keyboard back from the VM (every other key goes to
// it, Tab included): focus moves to Send Ctrl-Alt-Del (the viewer switch
// is one Shift+Tab before it).
$('main').addEventListener('keydown', (e) => {
  if (e.code === 'BracketRight' && e.ctrlKey && !e.altKey && !e.shiftKey && !e.metaKey && e.target.closest('.screen')) {
    e.preventDefault();
    e.stopPropagation();
    cad.focus();
  }
}, true);

const ticket = takeTicket();
const host = urlHost(ticket.host);
const port = Number(ticket.port);
if (!ticket.password) {
  noTicket('No console ticket in this link.');
} else if (!host || !/^[0-9]{1,5}$/.test(ticket.port) || port < 1 || port > 65535) {
  noTicket(`This link names no console: host ${JSON.stringify(ticket.host)}, port ${JSON.stringify(ticket.port)}.`);
} else {
  const label = ticket.vm || `${host}:${port}`;
  document.title = `Console of ${label} · deorch`;
  $('title').textContent = `Console of ${label}`;
  connectVnc({ ...ticket, host, port }).catch((e) => noTicket(`The console page failed: ${e.message}`));
  if (ticket.vm) offerViewers(ticket.vm);
}
