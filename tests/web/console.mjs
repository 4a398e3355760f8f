// The browser of tests/web_console.rs: Debian's headless chromium through
// playwright-core on a node's console page (/console.html), with a real
// QEMU guest behind it whose VGA console is a shell.
//
//   DEORCH_WEB_DIR   where tests/web/setup.sh installed playwright-core and axe-core
//   DEORCH_URL       the node's HTTPS origin (self-signed)
//   DEORCH_SESSION   the owner's session token (the deorch_session cookie)
//   DEORCH_VM        NAMESPACE/NAME of the running VM
//   DEORCH_SERIAL    the VM's serial log, where what the shell runs shows
//   DEORCH_WORD      what to echo to the serial console through the screen
//   DEORCH_SHOTS     where console.png goes
//   DEORCH_FAILSHOT  where the screenshot of a failure goes

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
const VM = env('DEORCH_VM');
const WORD = env('DEORCH_WORD');
const SERIAL = env('DEORCH_SERIAL');
const SHOTS = env('DEORCH_SHOTS');
const T = 10_000;
const started = Date.now();

const seen = { errors: [], violations: [], requests: [], sockets: [] };
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

/** A fresh tab, watched for script errors, CSP refusals, requests and
 * websockets. */
async function newPage() {
  if (page) await leavePage();
  page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => seen.errors.push('page error: ' + e.message));
  page.on('request', (r) => seen.requests.push({ url: r.url(), body: r.postData() || '', headers: r.headers() }));
  page.on('websocket', (ws) => seen.sockets.push(ws.url()));
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

// What a US keyboard types with Shift (noVNC sends QEMU the keys'
// scancodes, so the guest sees Shift as a person would press it).
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
  // The owner's session, as the node's page leaves it after a login.
  await context.addCookies([
    { name: 'deorch_session', value: env('DEORCH_SESSION'), url: BASE, httpOnly: true, secure: true, sameSite: 'Strict' },
  ]);

  await step('without a ticket the page says how to get one', async () => {
    await newPage();
    await page.goto(BASE + '/console.html');
    const text = await waitState('failed');
    check(text.includes('No console ticket'), `status: ${text}`);
    check(await page.locator('#help').isVisible(), 'no help shown');
    const help = await page.locator('#help').innerText();
    check(help.includes('console VM') && help.includes('deorch console VM'), `help: ${help}`);
    check(!(await page.locator('#screen').isVisible()), 'an empty screen is shown');
    await axe('without a ticket');
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
    check(
      ticket.url === `/console.html#host=${ticket.host}&port=${ticket.websocketPort}&password=${ticket.password}`,
      `the ticket's link: ${ticket.url}`,
    );
  });
  const wss = `wss://${ticket.host}:${ticket.websocketPort}/`;

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

  await step('the page\'s `console VM` opens the console over wss', async () => {
    await newPage();
    // The node's page with the command line `console VM`: its button asks
    // a fresh ticket and opens the console page with it (keyboard only).
    await page.goto(BASE + '/?q=' + encodeURIComponent('console ' + VM.split('/').pop()));
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
    check(text.startsWith('Connected'), text);
    check(
      await page.evaluate(() => document.activeElement && document.activeElement.tagName === 'CANVAS'),
      'the VM screen does not have the keyboard focus',
    );
    await focusShows('the screen');
    check(!(await page.locator('#cad').isDisabled()), 'Ctrl-Alt-Del disabled while connected');
  });

  await step('what is typed on the screen runs in the guest', async () => {
    // A fresh prompt, then the command, with the keyboard only.
    await page.keyboard.press('Enter');
    await typeOnScreen(`echo ${WORD} > /dev/ttyS0`);
    await page.keyboard.press('Enter');
    const deadline = Date.now() + 15_000;
    for (;;) {
      const serial = readFileSync(SERIAL, 'utf8');
      if (serial.split('\n').some((l) => l.trim() === WORD)) break;
      check(Date.now() < deadline, `${WORD} never reached the serial console; its end:\n${serial.slice(-400)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  await step('screenshot and axe-core while connected', async () => {
    // The screen's update of the echoed line is in by now; let it paint.
    await page.waitForTimeout(500);
    await page.screenshot({ path: join(SHOTS, 'console.png') });
    await axe('connected');
  });

  await step('Ctrl+] takes the keyboard back; Disconnect by keyboard', async () => {
    await page.keyboard.press('Control+BracketRight');
    check(await page.evaluate(() => document.activeElement.id === 'cad'), 'Ctrl+] left the focus on the screen');
    await focusShows('Send Ctrl-Alt-Del');
    await page.keyboard.press('Tab');
    check(await page.evaluate(() => document.activeElement.id === 'disconnect'), 'Tab did not reach Disconnect');
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
  const leaks = seen.requests.filter(
    (r) => r.url.includes(ticket.password) || r.body.includes(ticket.password) || Object.values(r.headers).some((h) => h.includes(ticket.password)),
  );
  check(leaks.length === 0, `the password left the browser: ${leaks.map((r) => r.url)}`);
  check(seen.sockets.every((u) => u === wss), `websockets: ${seen.sockets}`);
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
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
