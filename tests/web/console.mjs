// The browser of tests/web_console.rs: Debian's headless chromium through
// playwright-core. It logs in on a node's page, makes and starts a VM by
// typing in its command line, watches it reach Running, then types into
// the guest's VGA shell through the console page (/console.html): with
// noVNC straight to QEMU's websocket, then with spice-html5 through the
// node's SPICE bridge. What the shell runs shows on the serial console.
//
//   DEORCH_WEB_DIR     where tests/web/setup.sh installed playwright-core and axe-core
//   DEORCH_URL         the node's HTTPS origin (self-signed)
//   DEORCH_WIF         the owner's key, imported in the page
//   DEORCH_ADDRESS     its address, which the page must show
//   DEORCH_SOURCE      the stopped VM with SPICE the new VM copies
//   DEORCH_VM          NAMESPACE/NAME of the VM to make
//   DEORCH_SERIAL      the VM's serial log, where what the shell runs shows
//   DEORCH_WORD        what to echo to the serial console through noVNC
//   DEORCH_SPICE_WORD  what to echo to the serial console through SPICE
//   DEORCH_SHOTS       where console-running.png, console.png and console-spice.png go
//   DEORCH_FAILSHOT    where the screenshot of a failure goes

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set');
  return v;
};
const require = createRequire(join(env('DEORCH_WEB_DIR'), 'package.json'));
const { chromium } = require('playwright-core');
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = env('DEORCH_URL').replace(/\/$/, '');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const SOURCE = env('DEORCH_SOURCE');
const VM = env('DEORCH_VM');
const NAME = VM.split('/').pop();
const WORD = env('DEORCH_WORD');
const SPICE_WORD = env('DEORCH_SPICE_WORD');
const SERIAL = env('DEORCH_SERIAL');
const SHOTS = env('DEORCH_SHOTS');
const T = 10_000;
const started = Date.now();

// Every ticket's password the node handed out (from the answers'
// bodies) and the owner's key, to check none of them ever leaves the
// browser.
const seen = { errors: [], violations: [], requests: [], sockets: [], passwords: new Set([WIF]), console: [] };
let browser;
let context;
let page;

function check(ok, message) {
  if (!ok) throw new Error(message);
}

async function step(name, f) {
  const t0 = Date.now();
  await f();
  console.log(`ok ${name} (${Date.now() - t0} ms)`);
}

/** A fresh tab, watched for script errors, CSP refusals, requests,
 * websockets and the tickets' passwords. */
async function newPage() {
  if (page) await leavePage();
  page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => seen.errors.push('page error: ' + e.message));
  // What the page's scripts log (spice-html5 logs its channels' life),
  // shown when a step fails.
  page.on('console', (m) => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on('request', (r) => seen.requests.push({ url: r.url(), body: r.postData() || '', headers: r.headers() }));
  page.on('websocket', (ws) => seen.sockets.push(ws.url()));
  // Each ticket's answer, read on its way to the page (the button that
  // asks one leaves the page at once, taking the answer's body with it).
  await page.route(/\/v1\/vms\/[^/]+\/[^/]+\/console$/, async (route) => {
    const response = await route.fetch();
    const body = await response.text();
    try {
      const { password } = JSON.parse(body);
      if (password) seen.passwords.add(password);
    } catch {
      // A refusal: no password.
    }
    await route.fulfill({ response, body });
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__violations.push(`${e.violatedDirective} refused ${e.blockedURI || 'inline code'}`),
    );
  });
  return page;
}

/** Close the tab, keeping what its CSP refused. */
async function leavePage() {
  seen.violations.push(...(await page.evaluate(() => window.__violations || []).catch(() => [])));
  await page.close();
  page = null;
}

async function state() {
  return page.locator('#status').getAttribute('data-state');
}

async function waitState(want, timeout = T) {
  await page.waitForFunction((w) => document.getElementById('status').dataset.state === w, want, { timeout }).catch(async () => {
    throw new Error(`the status never became ${want}: ${await state()}: ${await page.locator('#status').textContent()}`);
  });
  return (await page.locator('#status').textContent()) || '';
}

/** axe-core on the page as it is: no serious or critical violation. */
async function axe(label) {
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  for (const v of violations) console.log(`  axe (${label}): ${v.impact} ${v.id}: ${v.help} at ${v.nodes.join(', ')}`);
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `axe-core (${label}): ${bad.length} serious or critical violation(s): ${JSON.stringify(bad)}`);
}

/** The focused element has a visible outline. */
async function focusShows(what) {
  const shows = await page.evaluate(() => {
    const s = getComputedStyle(document.activeElement);
    return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
  });
  check(shows, `the keyboard focus on ${what} is not visible`);
}

const focusedIs = (selector) => page.evaluate((s) => Boolean(document.activeElement && document.activeElement.matches(s)), selector);

/** Tab (at most `max` times) until `selector` has the focus. */
async function tabTo(selector, max = 20) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (await focusedIs(selector)) return;
  }
  throw new Error(`${max} presses of Tab never reached ${selector}`);
}

/** Replace the command line's text by typing, as a person does. */
async function typeQuery(text) {
  check(await focusedIs('#q'), 'the command line does not have the focus');
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Backspace');
  await page.keyboard.type(text, { delay: 15 });
}

/** The plan for `verb` shows, changing the cluster; Enter applies it. */
async function planAndApply(verb) {
  await page.locator(`#plan[data-verb="${verb}"]`).waitFor();
  await page.locator('#plan-changes.changes').waitFor();
  await page.keyboard.press('Enter');
  await page.locator('#applied', { hasText: NAME }).waitFor();
  check((await page.locator('#plan-changes').textContent()) === 'Applied', 'the plan still offers to apply');
}

// What a US keyboard types with Shift (both viewers send the guest the
// keys' scancodes, so the guest sees Shift as a person would press it).
const SHIFTED = { '>': 'Period', '<': 'Comma', '|': 'Backslash', $: 'Digit4', _: 'Minus', '"': 'Quote', ':': 'Semicolon', '&': 'Digit7' };

/** Type `text` on the focused screen, key by key, as a person would. */
async function typeOnScreen(text) {
  for (const ch of text) {
    let key = ch;
    if (/[A-Z]/.test(ch)) key = `Shift+Key${ch}`;
    else if (SHIFTED[ch]) key = `Shift+${SHIFTED[ch]}`;
    else if (ch === ' ') key = 'Space';
    await page.keyboard.press(key, { delay: 5 });
  }
}

/** Wait (bounded) for a line that is exactly `line` on the serial console. */
async function serialShows(line, limit) {
  const deadline = Date.now() + limit;
  for (;;) {
    const serial = readFileSync(SERIAL, 'utf8');
    if (serial.split('\n').some((l) => l.trim() === line)) return;
    check(Date.now() < deadline, `${line} never reached the serial console; its end:\n${serial.slice(-400)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait (bounded) for `text` anywhere in the serial log. */
async function serialHas(text, limit) {
  const deadline = Date.now() + limit;
  for (;;) {
    let serial = '';
    try {
      serial = readFileSync(SERIAL, 'utf8');
    } catch {
      // Not written yet.
    }
    if (serial.includes(text)) return;
    check(Date.now() < deadline, `no ${text} on the serial console in ${limit} ms; its end:\n${serial.slice(-400)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Whether the focus is on the VM's screen (a canvas inside `screen`). */
const screenFocused = (screen) =>
  page.evaluate((id) => {
    const a = document.activeElement;
    return Boolean(a && a.tagName === 'CANVAS' && a.closest('#' + id));
  }, screen);

async function main() {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // Loopback only here: keep chromium from calling its vendor.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 640 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });

  await step('without a ticket the page says how to get one', async () => {
    await newPage();
    await page.goto(BASE + '/console.html');
    const text = await waitState('failed');
    check(text.includes('No console ticket'), `status: ${text}`);
    check(await page.locator('#help').isVisible(), 'no help shown');
    const help = await page.locator('#help').innerText();
    check(help.includes('console VM') && help.includes('deorch console VM'), `help: ${help}`);
    check(!(await page.locator('#screen').isVisible()), 'an empty screen is shown');
    check(!(await page.locator('#viewers').isVisible()), 'a viewer switch without a VM');
    await axe('without a ticket');
  });

  await step('log in on the node\'s page with the owner\'s key', async () => {
    await page.goto(BASE + '/');
    await page.locator('#login').waitFor({ state: 'visible' });
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    const who = await page.locator('#who').textContent();
    check(who === ADDRESS, `the page shows ${who}, not ${ADDRESS}`);
    check(await focusedIs('#q'), 'the command line does not have the focus after login');
  });

  await step(`type "create vm ${NAME} from ${SOURCE}": its plan, applied on Enter`, async () => {
    await typeQuery(`create vm ${NAME} from ${SOURCE}`);
    await page.locator('#plan[data-verb="create-vm"]').waitFor();
    const manifest = (await page.locator('#plan-manifest-text').textContent()) || '';
    check(/spice: true/.test(manifest), `the new VM has no SPICE: ${manifest}`);
    await planAndApply('create-vm');
  });

  await step(`type "start ${NAME}": applied on Enter`, async () => {
    await typeQuery(`start ${NAME}`);
    await planAndApply('start');
  });

  await step(`type "vms": ${NAME}'s card reaches Running, live`, async () => {
    await typeQuery('vms');
    const card = page.locator(`#results li[data-name="${NAME}"]`);
    await card.waitFor();
    await page.locator('#live[data-state="on"]').waitFor();
    await card.locator('.meta', { hasText: 'Running' }).waitFor({ timeout: 60_000 });
    check((await page.inputValue('#q')) === 'vms', 'the query changed');
    await page.screenshot({ path: join(SHOTS, 'console-running.png'), fullPage: true });
  });

  await step('the guest boots (its ready marker on the serial console)', async () => {
    // The test watches the boot (one more if TCG hangs); the shell on
    // the VGA console starts before the marker.
    await serialHas('DEORCH-GUEST-READY', 90_000);
  });

  let ticket;
  await step('a console ticket for the session', async () => {
    const r = await page.evaluate(async (vm) => {
      const res = await fetch(`/v1/vms/${vm}/console`, { method: 'POST', credentials: 'same-origin' });
      return { status: res.status, body: await res.text() };
    }, VM);
    check(r.status === 200, `POST console: ${r.status} ${r.body}`);
    ticket = JSON.parse(r.body);
    check(ticket.websocketTls === true, `the websocket has no TLS: ${r.body}`);
    check(Number(ticket.spicePort) > 0, `the VM has no SPICE port: ${r.body}`);
    check(
      ticket.url === `/console.html#host=${ticket.host}&port=${ticket.websocketPort}&password=${ticket.password}`,
      `the ticket's link: ${ticket.url}`,
    );
  });
  const wss = `wss://${ticket.host}:${ticket.websocketPort}/`;
  const bridge = `wss://${new URL(BASE).host}/console/spice/${VM}`;

  await step('a wrong password shows the refusal', async () => {
    await newPage();
    // With the VM's name, as the node's page links it.
    await page.goto(BASE + ticket.url.replace(/password=[^&]*/, 'password=not-the-ticket') + '&vm=' + encodeURIComponent(VM));
    const href = await page.evaluate(() => location.href);
    check(!href.includes('not-the-ticket'), `the password stayed in the URL: ${href}`);
    const text = await waitState('failed', 15_000);
    check(text.includes('refused the password') && text.includes(`run console ${VM} again`), `status: ${text}`);
    check((await page.locator('h1').textContent()) === `Console of ${VM}`, 'the title does not name the VM');
    check(seen.sockets.includes(wss), `no websocket to ${wss}: ${seen.sockets}`);
    check(await page.locator('#disconnect').isDisabled(), 'Disconnect enabled after a refusal');
    await axe('refused');
  });

  await step('the page\'s `console VM` opens the console over wss, and offers SPICE', async () => {
    await newPage();
    // The node's page with the command line `console VM`: its button asks
    // a fresh ticket and opens the console page with it (keyboard only).
    await page.goto(BASE + '/?q=' + encodeURIComponent('console ' + NAME));
    const open = page.locator('button.open-console');
    await open.waitFor({ timeout: 15_000 });
    await open.focus();
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/console\.html#/, { timeout: 15_000 });
    // The module ran before `load`: the password is out of the address
    // bar already (its history entry replaced, not added).
    const href = await page.evaluate(() => location.href);
    check(!href.includes('password='), `the password stayed in the URL: ${href}`);
    check(href.includes(`/console.html#host=${ticket.host}&port=${ticket.websocketPort}`), href);
    const text = await waitState('connected', 20_000);
    check(text.startsWith('Connected') && text.includes('over VNC'), text);
    check(await screenFocused('screen'), 'the VM screen does not have the keyboard focus');
    await focusShows('the screen');
    check(!(await page.locator('#cad').isDisabled()), 'Ctrl-Alt-Del disabled while connected');
    // The VM has SPICE: the switch shows, VNC pressed, and the native
    // clients' addresses stay in view.
    await page.locator('#viewers').waitFor({ state: 'visible' });
    check((await page.getAttribute('#use-vnc', 'aria-pressed')) === 'true', 'VNC is not the pressed viewer');
    check((await page.getAttribute('#use-spice', 'aria-pressed')) === 'false', 'SPICE is pressed');
    const native = (await page.locator('#native').textContent()) || '';
    for (const at of [`VNC ${ticket.host}:${ticket.vncPort}`, `SPICE ${ticket.host}:${ticket.spicePort}`]) {
      check(native.includes(at), `the native clients' line lacks ${at}: ${native}`);
    }
  });

  await step('what is typed on the screen runs in the guest (noVNC)', async () => {
    // A fresh prompt, then the command, with the keyboard only.
    await page.keyboard.press('Enter');
    await typeOnScreen(`echo ${WORD} > /dev/ttyS0`);
    await page.keyboard.press('Enter');
    await serialShows(WORD, 15_000);
  });

  await step('screenshot and axe-core while connected over VNC', async () => {
    // The screen's update of the echoed line is in by now; let it paint.
    await page.waitForTimeout(500);
    await page.screenshot({ path: join(SHOTS, 'console.png') });
    await axe('connected');
  });

  await step('Ctrl+] takes the keyboard back; Shift+Tab and Enter switch to SPICE', async () => {
    await page.keyboard.press('Control+BracketRight');
    check(await focusedIs('#cad'), 'Ctrl+] left the focus on the screen');
    await focusShows('Send Ctrl-Alt-Del');
    await page.keyboard.press('Shift+Tab');
    check(await focusedIs('#use-spice'), 'Shift+Tab did not reach the SPICE switch');
    await focusShows('the SPICE switch');
    await page.keyboard.press('Enter');
    const text = await waitState('connected', 20_000);
    check(text.startsWith('Connected') && text.includes('over SPICE'), text);
    check((await page.getAttribute('#use-spice', 'aria-pressed')) === 'true', 'SPICE is not the pressed viewer');
    check(!(await page.locator('#screen').isVisible()), 'the VNC screen still shows');
    // spice-html5 draws the display channel's surface in a canvas, which
    // takes the keyboard.
    await page.locator('#spice-screen canvas').waitFor({ timeout: 15_000 });
    await page.waitForFunction(() => {
      const a = document.activeElement;
      return a && a.tagName === 'CANVAS' && a.closest('#spice-screen');
    }, null, { timeout: 10_000 });
    await focusShows('the SPICE screen');
    const sockets = seen.sockets.filter((u) => u === bridge).length;
    check(sockets >= 3, `spice-html5 opened ${sockets} channel(s) through ${bridge}: ${seen.sockets}`);
  });

  await step('what is typed on the screen runs in the guest (SPICE)', async () => {
    await page.keyboard.press('Enter');
    await typeOnScreen(`echo ${SPICE_WORD} > /dev/ttyS0`);
    await page.keyboard.press('Enter');
    await serialShows(SPICE_WORD, 15_000);
  });

  await step('screenshot and axe-core while connected over SPICE', async () => {
    await page.waitForTimeout(500);
    await page.screenshot({ path: join(SHOTS, 'console-spice.png') });
    await axe('connected over SPICE');
  });

  await step('Ctrl+] takes the keyboard back from SPICE; Disconnect by keyboard', async () => {
    await page.keyboard.press('Control+BracketRight');
    check(await focusedIs('#cad'), 'Ctrl+] left the focus on the SPICE screen');
    await page.keyboard.press('Tab');
    check(await focusedIs('#disconnect'), 'Tab did not reach Disconnect');
    await page.keyboard.press('Enter');
    const text = await waitState('disconnected');
    check(text.startsWith('Disconnected'), text);
  });

  await step('a reload finds no password to reuse', async () => {
    await page.reload();
    const text = await waitState('failed');
    check(text.includes('No console ticket'), `status after a reload: ${text}`);
  });

  await leavePage();
  // This node, and the console's port: its websocket, and before each
  // connection the one request Chromium needs there (console.js,
  // decideClientCertificate).
  const origin = new URL(BASE).origin;
  const consoleOrigin = `https://${ticket.host}:${ticket.websocketPort}`;
  const away = seen.requests.filter((r) => new URL(r.url).origin !== origin && r.url !== consoleOrigin + '/');
  check(away.length === 0, `requests to other origins: ${away.map((r) => r.url)}`);
  check(seen.requests.some((r) => r.url === consoleOrigin + '/'), 'no request decided the client certificate');
  check(seen.passwords.size >= 4, `only ${seen.passwords.size - 1} ticket(s) seen`);
  const leaks = seen.requests.filter((r) =>
    [...seen.passwords].some(
      (p) => r.url.includes(p) || r.body.includes(p) || Object.values(r.headers).some((h) => h.includes(p)),
    ),
  );
  check(leaks.length === 0, `a ticket's password or the key left the browser: ${leaks.map((r) => r.url)}`);
  check(seen.sockets.every((u) => u === wss || u === bridge), `websockets: ${seen.sockets}`);
  check(seen.violations.length === 0, `the CSP refused: ${seen.violations.join('; ')}`);
  check(seen.errors.length === 0, seen.errors.join('; '));
  console.log(`all steps passed in ${Date.now() - started} ms`);
}

try {
  await main();
  await browser.close();
} catch (e) {
  console.error('FAILED: ' + (e && e.stack ? e.stack : e));
  if (page && process.env.DEORCH_FAILSHOT) {
    await page.screenshot({ path: process.env.DEORCH_FAILSHOT }).catch(() => {});
    console.error('--- the page said:\n' + (await page.locator('body').innerText().catch(() => '')));
  }
  console.error('--- its console, last 40 lines:\n' + seen.console.slice(-40).join('\n'));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
