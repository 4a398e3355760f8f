// Drives the page a node serves at `/` in Debian's headless chromium,
// with the keyboard only, as tests/web_ui.rs starts it (the node, its
// owner's key and the paths come in the environment). Prints one line per
// step with its time; exits non-zero at the first failed step, with a
// screenshot of the page at that moment.
//
//   DEORCH_WEB_DIR   where tests/web/setup.sh installed playwright-core and axe-core
//   DEORCH_URL       https://127.0.0.1:PORT (self-signed certificate)
//   DEORCH_WIF       a key the node admits (the cluster owner's), imported in the page
//   DEORCH_ADDRESS   its P2WPKH address, which the page must show
//   DEORCH_NODE      the node's name (its Satellite)
//   DEORCH_BIN, DEORCH_SOCKET   the CLI and the node's socket, to change the
//                    store from outside the browser (live updates)
//   DEORCH_SHOTS     where the screenshots go (docs/ui)
//   DEORCH_FAILSHOT  where the screenshot of a failure goes

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set');
  return v;
};
const WEB = env('DEORCH_WEB_DIR');
const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const NODE = env('DEORCH_NODE');
const SHOTS = env('DEORCH_SHOTS');
const require = createRequire(join(WEB, 'package.json'));
const { chromium } = require('playwright-core');
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const T = 10_000;

mkdirSync(SHOTS, { recursive: true });
const started = Date.now();
let browser;
let page;

function check(ok, message) {
  if (!ok) throw new Error(message);
}

async function step(name, f) {
  const t0 = Date.now();
  await f();
  console.log(`ok ${name} (${Date.now() - t0} ms)`);
}

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, name), fullPage: true });
}

/** Tab (at most `max` times) until `selector` has the focus, which must show. */
async function tabTo(selector, max = 20) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) {
      await checkFocusVisible(selector);
      return;
    }
  }
  throw new Error(`${max} presses of Tab never reached ${selector}`);
}

/** The focused element (or the search bar around it) has a visible outline. */
async function checkFocusVisible(what) {
  const visible = await page.evaluate(() => {
    const e = document.activeElement;
    const shows = (x) => {
      const s = getComputedStyle(x);
      return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
    };
    return shows(e) || Boolean(e.closest('.bar') && shows(e.closest('.bar')));
  });
  check(visible, `the keyboard focus on ${what} is not visible (no outline)`);
}

/** Replace the search bar's text by typing, as a person does. */
async function typeQuery(text) {
  check(await page.evaluate(() => document.activeElement.id === 'q'), 'the search bar does not have the focus');
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Backspace');
  await page.keyboard.type(text, { delay: 15 });
}

async function textOf(selector) {
  return (await page.locator(selector).textContent()) || '';
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

async function main() {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // The machine has no network but loopback: without these chromium
    // keeps trying to reach its vendor's services.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 760 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  page = await context.newPage();
  page.setDefaultTimeout(T);

  // What the test holds the page to, all along: no script error, no
  // request the CSP refused, and the private key in no request.
  const errors = [];
  page.on('pageerror', (e) => errors.push('page error: ' + e.message));
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__violations.push(`${e.violatedDirective} refused ${e.blockedURI || 'inline code'}`),
    );
  });
  const leaks = [];
  const origins = new Set();
  page.on('request', (r) => {
    origins.add(new URL(r.url()).origin);
    if (r.url().includes(WIF) || (r.postData() || '').includes(WIF)) leaks.push(r.method() + ' ' + r.url());
  });

  await step('the page loads logged out', async () => {
    const r = await page.goto(BASE + '/');
    check(r.status() === 200, `GET / answered ${r.status()}`);
    const csp = r.headers()['content-security-policy'] || '';
    check(csp.includes("default-src 'none'"), `no strict CSP: ${csp}`);
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#console').isHidden(), 'the command line shows before login');
    await shot('login.png');
  });
  await step('axe-core: logged out', () => axe('logged out'));

  await step('generate a key: the signature is good, the address not admitted', async () => {
    await tabTo('#generate');
    await page.keyboard.press('Enter');
    await page.locator('#login-status', { hasText: 'may not log in' }).waitFor();
    const generated = await textOf('#stored-address');
    check(/^bc1q[02-9ac-hj-np-z]{38}$/.test(generated), `generated address ${generated}`);
    check(generated !== ADDRESS, 'the generated key is the owner');
    check((await textOf('#login-status')).includes(generated), 'the refusal does not name the address');
    check((await page.locator('#backup-wif').textContent()).length > 50, 'the new key is not offered for backup');
  });

  await step('import the owner\'s WIF: logged in, the key kept in the browser only', async () => {
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `the page shows ${await textOf('#who')}, not ${ADDRESS}`);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'deorch_session');
    check(session && session.httpOnly && session.secure, `no HttpOnly Secure session cookie: ${JSON.stringify(cookies)}`);
    check((await page.evaluate(() => localStorage.getItem('deorch.key'))) === WIF, 'the key is not kept in localStorage');
    check(await page.evaluate(() => document.activeElement.id === 'q'), 'the search bar does not have the focus after login');
    await checkFocusVisible('the search bar');
  });

  await step('type "nodes": the node\'s card', async () => {
    await typeQuery('nodes');
    await page.locator(`#results li[data-name="${NODE}"]`).waitFor();
    check((await textOf('#plan-cli')).startsWith('deorch '), `CLI shown: ${await textOf('#plan-cli')}`);
    check((await textOf('#results-status')).includes('result'), 'the results are not announced');
    await shot('results.png');
  });
  await step('axe-core: logged in, with results', () => axe('logged in'));

  await step('a parse error is shown with its column', async () => {
    await typeQuery('create vm web1 frm tiny');
    await page.locator('#q-error', { hasText: 'Column' }).waitFor();
    check((await page.getAttribute('#q', 'aria-invalid')) === 'true', 'the bar is not marked invalid');
    check(await page.locator('#plan').isHidden(), 'a plan shows for a parse error');
    await shot('parse-error.png');
  });

  await step('suggestions are picked with the arrows', async () => {
    await typeQuery('cre');
    await page.locator('#suggestions li[role=option]').first().waitFor();
    check((await page.getAttribute('#q', 'aria-expanded')) === 'true', 'the list is open but aria-expanded is not true');
    await page.keyboard.press('ArrowDown');
    check((await page.getAttribute('#q', 'aria-activedescendant')) === 'suggestion-0', 'ArrowDown does not pick the first suggestion');
    check((await page.getAttribute('#suggestion-0', 'aria-selected')) === 'true', 'the picked suggestion is not aria-selected');
    const picked = await textOf('#suggestion-0');
    await shot('suggestions.png');
    await page.keyboard.press('Enter');
    const line = await page.inputValue('#q');
    check(line.startsWith('cre') && line.length > 3, `Enter on "${picked}" left "${line}" in the bar`);
    check(await page.locator('#suggestions').isHidden(), 'the list stays open after a pick');
  });

  await step('type "create vm web1 from tiny": the plan and its CLI', async () => {
    await typeQuery('create vm web1 from tiny');
    await page.locator('#plan-changes.changes').waitFor();
    const cli = await textOf('#plan-cli');
    check(cli.startsWith('deorch ') && cli.includes('web1'), `CLI shown: ${cli}`);
    check((await textOf('#plan-summary')).length > 0, 'no plan summary');
    await shot('plan.png');
  });

  await step('Enter applies it', async () => {
    await page.keyboard.press('Enter');
    await page.locator('#applied', { hasText: 'web1' }).waitFor();
    check((await textOf('#plan-changes')) === 'Applied', 'the plan still offers to apply');
    await shot('applied.png');
  });

  await step('type "vms": web1 is listed', async () => {
    await typeQuery('vms');
    await page.locator('#results li[data-name="web1"]').waitFor();
    await page.locator('#live[data-state="on"]').waitFor();
    await shot('vms.png');
  });

  await step('a change made outside the page shows without typing', async () => {
    const yaml = 'apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web2\nspec:\n  cpu: 1\n  memory: 64Mi\n';
    execFileSync(env('DEORCH_BIN'), ['apply', '-f', '-'], {
      input: yaml,
      env: { ...process.env, DEORCH_SOCKET: env('DEORCH_SOCKET') },
    });
    await page.locator('#results li[data-name="web2"]').waitFor();
    // Its status follows as the node starts it (the fake hypervisor).
    await page.locator('#results li[data-name="web2"] .meta', { hasText: 'Running' }).waitFor();
    check((await page.inputValue('#q')) === 'vms', 'the query changed');
    await shot('live.png');
  });

  await step('log out, and stay logged out on reload', async () => {
    await tabTo('#logout', 40);
    await page.keyboard.press('Enter');
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#console').isHidden(), 'the command line stays after logout');
    await page.reload();
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#session').isHidden(), 'logged in again after a reload');
    check((await textOf('#stored-address')) === ADDRESS, 'the kept key is not offered after logout');
    await shot('logged-out.png');
  });

  const violations = await page.evaluate(() => window.__violations);
  check(violations.length === 0, `the CSP refused: ${violations.join('; ')}`);
  check(errors.length === 0, errors.join('; '));
  check(leaks.length === 0, `the private key left the browser: ${leaks.join(', ')}`);
  check(origins.size === 1 && origins.has(new URL(BASE).origin), `requests went to ${[...origins].join(', ')}`);
  console.log(`all steps passed in ${Date.now() - started} ms`);
}

try {
  await main();
  await browser.close();
} catch (e) {
  console.error('FAILED: ' + (e && e.stack ? e.stack : e));
  if (page && process.env.DEORCH_FAILSHOT) {
    await page.screenshot({ path: process.env.DEORCH_FAILSHOT, fullPage: true }).catch(() => {});
    const text = await page.locator('body').innerText().catch(() => '');
    console.error('--- the page said:\n' + text);
    console.error('--- screenshot: ' + process.env.DEORCH_FAILSHOT);
  }
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
