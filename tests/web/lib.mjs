// What the browser scripts of tests/web_ui.rs share: Debian's headless
// chromium through playwright-core, steps that print their time, keyboard
// helpers, axe-core, and the checks every script holds the page to (no
// script error, no request the CSP refused, no request to another origin,
// no secret in any request).
//
//   DEORCH_WEB_DIR   where tests/web/setup.sh installed playwright-core and axe-core
//   DEORCH_FAILSHOT  where the screenshot of a failure goes

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set');
  return v;
};

const require = createRequire(join(env('DEORCH_WEB_DIR'), 'package.json'));
const { chromium } = require('playwright-core');
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
export const T = 10_000;

/** The browser, its context and the page every helper drives. */
export const b = { browser: null, context: null, page: null };

const started = Date.now();

export function launch() {
  return chromium.launch({
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
}

/**
 * Start the browser and a page on `base` (self-signed HTTPS), watched
 * for script errors, CSP refusals, other origins and `secrets`: strings
 * no request may carry, or `{text, only}`, one only requests to the
 * paths `only` may.
 */
export async function open(base, secrets) {
  b.browser = await launch();
  b.context = await b.browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1000, height: 760 },
    colorScheme: 'light',
    reducedMotion: 'reduce',
  });
  const page = await b.context.newPage();
  b.page = page;
  b.watch = { ...(await watchPage(page, secrets)), base };
  return page;
}

/** The checks held all along: call at the end of a script. */
export async function finalChecks() {
  const { errors, leaks, origins, base } = b.watch;
  const violations = await b.page.evaluate(() => window.__violations);
  check(violations.length === 0, `the CSP refused: ${violations.join('; ')}`);
  check(errors.length === 0, errors.join('; '));
  check(leaks.length === 0, `a secret left the browser: ${leaks.join(', ')}`);
  check(origins.size === 1 && origins.has(new URL(base).origin), `requests went to ${[...origins].join(', ')}`);
  console.log(`all steps passed in ${Date.now() - started} ms`);
}

/** Run `main`, then close the browser; on failure a screenshot and exit 1. */
export async function run(main) {
  try {
    await main();
    await b.browser.close();
  } catch (e) {
    console.error('FAILED: ' + (e && e.stack ? e.stack : e));
    const page = b.page;
    if (page && process.env.DEORCH_FAILSHOT) {
      await page.screenshot({ path: process.env.DEORCH_FAILSHOT, fullPage: true }).catch(() => {});
      const text = await page.locator('body').innerText().catch(() => '');
      console.error('--- the page said:\n' + text);
      console.error('--- screenshot: ' + process.env.DEORCH_FAILSHOT);
    }
    if (b.browser) await b.browser.close().catch(() => {});
    process.exit(1);
  }
}

export function check(ok, message) {
  if (!ok) throw new Error(message);
}

export async function step(name, f) {
  const t0 = Date.now();
  await f();
  console.log(`ok ${name} (${Date.now() - t0} ms)`);
}

/** Tab (at most `max` times) until `selector` has the focus, which must show. */
export async function tabTo(selector, max = 20, key = 'Tab') {
  const page = b.page;
  for (let i = 0; i < max; i++) {
    await page.keyboard.press(key);
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) {
      await checkFocusVisible(selector);
      return;
    }
  }
  throw new Error(`${max} presses of ${key} never reached ${selector}`);
}

/** The focused element (or the search bar around it) has a visible outline. */
export async function checkFocusVisible(what) {
  const visible = await b.page.evaluate(() => {
    const e = document.activeElement;
    const shows = (x) => {
      const s = getComputedStyle(x);
      return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
    };
    return shows(e) || Boolean(e.closest('.bar') && shows(e.closest('.bar')));
  });
  check(visible, `the keyboard focus on ${what} is not visible (no outline)`);
}

export async function focusedIs(selector) {
  return b.page.evaluate((s) => Boolean(document.activeElement && document.activeElement.matches(s)), selector);
}

/** Replace the search bar's text by typing, as a person does. */
export async function typeQuery(text) {
  const page = b.page;
  check(await focusedIs('#q'), 'the search bar does not have the focus');
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Backspace');
  await page.keyboard.type(text, { delay: 15 });
}

export async function textOf(selector) {
  return (await b.page.locator(selector).textContent()) || '';
}

/** axe-core on the page as it is: no serious or critical violation. */
export async function axe(label) {
  const page = b.page;
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  for (const v of violations) console.log(`  axe (${label}): ${v.impact} ${v.id}: ${v.help} at ${v.nodes.join(', ')}`);
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `axe-core (${label}): ${bad.length} serious or critical violation(s): ${JSON.stringify(bad)}`);
}

/** What the page's own `fetch` gets for `method path` (its cookies, its origin). */
export function fetchStatus(method, path, body) {
  return b.page.evaluate(
    async ([m, p, j]) => {
      const init = { method: m, credentials: 'same-origin', headers: {} };
      if (j !== null) {
        init.headers['content-type'] = 'application/json';
        init.body = JSON.stringify(j);
      }
      const r = await fetch(p, init);
      return { status: r.status, body: await r.text() };
    },
    [method, path, body === undefined ? null : body],
  );
}

/**
 * Watch another page of the browser (`b.context.newPage()`) as `open`
 * watches the first: script errors, CSP refusals, origins, and
 * `secrets` ({text, only} as for `open`; read at each request, so ones
 * pushed later count). A URL's fragment is not counted: it never leaves
 * the browser. Call before its first `goto`.
 */
export async function watchPage(page, secrets) {
  const w = { errors: [], leaks: [], origins: new Set(), requests: [] };
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => w.errors.push('page error: ' + e.message));
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__violations.push(`${e.violatedDirective} refused ${e.blockedURI || 'inline code'}`),
    );
  });
  page.on('request', (r) => {
    const url = new URL(r.url());
    url.hash = '';
    w.origins.add(url.origin);
    w.requests.push({ method: r.method(), url: url.href, path: url.pathname, body: r.postData() || '' });
    for (const s of secrets) {
      const { text, only } = typeof s === 'string' ? { text: s, only: [] } : s;
      const inUrl = url.href.includes(text);
      const inBody = (r.postData() || '').includes(text);
      if (inUrl || (inBody && !only.includes(url.pathname))) w.leaks.push(r.method() + ' ' + url.href);
    }
  });
  return w;
}

/** The checks of `finalChecks` for a page `watchPage` watched, on `origins`. */
export async function checkWatched(page, w, origins) {
  const violations = await page.evaluate(() => window.__violations || []);
  check(violations.length === 0, `the CSP refused: ${violations.join('; ')}`);
  check(w.errors.length === 0, w.errors.join('; '));
  check(w.leaks.length === 0, `a secret left the browser: ${w.leaks.join(', ')}`);
  const other = [...w.origins].filter((o) => !origins.includes(o));
  check(other.length === 0, `requests went to ${other.join(', ')}`);
}
