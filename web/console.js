// The browser console (console.html): noVNC's RFB client (rfb.js, built
// by web/novnc/build.sh from the npm package) connected straight to the
// VM's console websocket on its node, wss://HOST:PORT/ (TLS with the
// node's certificate), logged in with a console ticket's password.
//
// The link is /console.html#host=H&port=P&password=PW[&vm=NS/NAME], as
// `console VM` in the node's page and `deorch console VM` give it: a
// fragment, which the browser never sends anywhere. The password leaves
// the address bar and the history before anything else happens; a
// reload then finds no password and says how to get a new ticket (a
// ticket's password opens connections for 60 s only).

const $ = (id) => document.getElementById(id);
const status = $('status');
const screen = $('screen');
const cad = $('cad');
const leave = $('disconnect');

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
  screen.hidden = true;
  document.querySelector('.actions').hidden = true;
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
 * request is harmless to them.
 */
async function decideClientCertificate(where) {
  try {
    await fetch(`https://${where}/`, { mode: 'no-cors', credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' });
  } catch {
    // Expected: the websocket port serves no HTTP.
  }
}

async function connect({ host, port, vm, password }) {
  const where = `${host}:${port}`;
  const url = `wss://${where}/`;
  const label = vm || where;
  document.title = `Console of ${label} · deorch`;
  $('title').textContent = `Console of ${label}`;
  say('connecting', `Connecting to ${url}…`);
  // noVNC is imported here, after the password left the URL: the bundle
  // awaits at its top level (its H.264 probe), and a static import would
  // hold this whole script, the password's removal included, back as long.
  const [{ RFB }] = await Promise.all([import('./rfb.js'), decideClientCertificate(where)]);

  let rfb;
  try {
    rfb = new RFB(screen, url, { credentials: { password }, wsProtocols: ['binary'] });
  } catch (e) {
    noTicket(`Could not open ${url}: ${e.message}`);
    return;
  }
  // The VM's screen scaled to the window, never the VM's resolution
  // changed; the canvas is the keyboard's target, reachable with Tab.
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  const canvas = screen.querySelector('canvas');
  if (canvas) {
    // noVNC hides the focus outline; the page shows where the keys go.
    canvas.style.removeProperty('outline');
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'application');
    canvas.setAttribute('aria-label', `Screen of ${label}: keys typed here go to the VM`);
  }

  let connected = false;
  let refused = null;
  let leaving = false;
  rfb.addEventListener('connect', () => {
    connected = true;
    say('connected', `Connected to ${label}. Keys typed on its screen go to the VM.`);
    cad.disabled = false;
    leave.disabled = false;
    $('hint').hidden = false;
    rfb.focus();
  });
  rfb.addEventListener('desktopname', (e) => {
    if (!vm && e.detail.name) $('title').textContent = `Console of ${e.detail.name}`;
  });
  rfb.addEventListener('securityfailure', (e) => {
    refused = e.detail;
  });
  rfb.addEventListener('credentialsrequired', (e) => {
    refused = { reason: `it asks for ${e.detail.types.join(', ')}, and a console ticket has only a password` };
    rfb.disconnect();
  });
  rfb.addEventListener('disconnect', (e) => {
    cad.disabled = true;
    leave.disabled = true;
    $('hint').hidden = true;
    if (refused) {
      const reason = refused.reason ? ` (${refused.reason.trim()})` : '';
      say('failed', `The console refused the password${reason}. A ticket opens the console only within 60 s of being issued, and a newer ticket replaces it: run console ${vm || 'VM'} again for a new link.`);
    } else if (!connected) {
      say('failed', `Could not reach the console at ${url}: the VM may not run on that node any more, or this browser does not trust the node's certificate for ${host}. Run console ${vm || 'VM'} again for a new link.`);
    } else if (leaving) {
      say('disconnected', `Disconnected. To come back, run console ${vm || 'VM'} again for a new link.`);
    } else {
      say('failed', `The console closed the connection${e.detail.clean ? '' : ' unexpectedly'} (the VM stopped, or moved to another node?). Run console ${vm || 'VM'} again for a new link.`);
    }
  });

  cad.addEventListener('click', () => {
    rfb.sendCtrlAltDel();
    rfb.focus();
  });
  leave.addEventListener('click', () => {
    leaving = true;
    rfb.disconnect();
  });
  // Ctrl+] takes the keyboard back from the VM (every other key goes to
  // it, Tab included): focus moves to the first button.
  screen.addEventListener('keydown', (e) => {
    if (e.code === 'BracketRight' && e.ctrlKey && !e.altKey && !e.shiftKey && !e.metaKey) {
      e.preventDefault();
      e.stopPropagation();
      cad.focus();
    }
  }, true);
}

const ticket = takeTicket();
const host = urlHost(ticket.host);
const port = Number(ticket.port);
if (!ticket.password) {
  noTicket('No console ticket in this link.');
} else if (!host || !/^[0-9]{1,5}$/.test(ticket.port) || port < 1 || port > 65535) {
  noTicket(`This link names no console: host ${JSON.stringify(ticket.host)}, port ${JSON.stringify(ticket.port)}.`);
} else {
  connect({ ...ticket, host, port }).catch((e) => noTicket(`The console page failed: ${e.message}`));
}
