// The web page's figures (docs/PERFORMANCE.md), measured in Debian's
// headless chromium on loopback beside a peer page served here: noVNC's
// own client (Debian's `novnc`, /usr/share/novnc/vnc.html from a local
// static server). tests/web_ui.rs's ignored test `bench_page_figures`
// starts the node and the static server and runs this script.
//
//   (a) the first load's transferred bytes, as served and gzip'd;
//   (b) navigation start → the page usable (the search bar shown and
//       focused, logged in; noVNC: its connect dialog open), cold, p50;
//   (c) a store change applied with the CLI → its card in the page;
//   (d) with OBJECTS VMs in the store: the last key of a query → its
//       results in the page.
//
//   DEORCH_URL, DEORCH_WIF         the node and its owner's key
//   DEORCH_BIN, DEORCH_SOCKET      the CLI and the node's socket
//   DEORCH_NOVNC_URL               http://127.0.0.1:PORT/vnc.html
//   DEORCH_SAMPLES (20), DEORCH_OBJECTS (10000)

import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { b, env, open, run, check, step, tabTo, typeQuery } from './lib.mjs';

const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const NOVNC = env('DEORCH_NOVNC_URL');
const SAMPLES = Number(process.env.DEORCH_SAMPLES || 20);
const OBJECTS = Number(process.env.DEORCH_OBJECTS || 10000);
const figures = {};

const cli = (args, input) =>
  execFileSync(env('DEORCH_BIN'), args, {
    input,
    maxBuffer: 1 << 30,
    env: { ...process.env, DEORCH_SOCKET: env('DEORCH_SOCKET') },
  }).toString();

function stats(xs) {
  const s = [...xs].sort((x, y) => x - y);
  const at = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, p50: Math.round(at(0.5) * 10) / 10, p90: Math.round(at(0.9) * 10) / 10, min: Math.round(s[0] * 10) / 10, max: Math.round(s[s.length - 1] * 10) / 10 };
}

function say(name, value) {
  figures[name] = value;
  console.log(`FIGURE ${name}: ${JSON.stringify(value)}`);
}

async function newContext() {
  return b.browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 760 }, reducedMotion: 'reduce' });
}

/**
 * (a) Every response of a first load (fresh context: nothing cached,
 * `cookies` the session if any) until the page is usable and then a
 * second more: bytes on the wire (bodies as served, and headers), and
 * what each body gzip'd (level 6) would weigh. An event stream counts as
 * a request, its body as nothing (it never ends).
 */
async function firstLoad(url, which, cookies) {
  const context = await newContext();
  if (cookies) await context.addCookies(cookies);
  await context.addInitScript(readyProbe, which);
  const page = await context.newPage();
  const responses = [];
  page.on('response', (r) => responses.push(r));
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.__ready !== null, null, { timeout: 20000 });
  await page.waitForTimeout(1000);
  let body = 0;
  let headers = 0;
  let gzip = 0;
  const files = [];
  for (const r of responses) {
    const path = new URL(r.url()).pathname;
    if ((r.headers()['content-type'] || '').startsWith('text/event-stream')) {
      files.push(`${path} ${r.status()} (stream)`);
      continue;
    }
    const sizes = await r.request().sizes();
    const bytes = await r.body().catch(() => Buffer.alloc(0));
    body += sizes.responseBodySize;
    headers += sizes.responseHeadersSize;
    const gz = bytes.length ? gzipSync(bytes, { level: 6 }).length : 0;
    gzip += gz;
    files.push(`${path} ${r.status()} ${sizes.responseBodySize}/${gz}`);
  }
  await context.close();
  return { requests: responses.length, body, headers, wire: body + headers, gzipBodies: gzip, files };
}

/**
 * Installed before any script of the page: the time (ms since the
 * navigation started) the page first becomes usable, seen by a
 * MutationObserver. `which`: deorch (the command line shown, logged in,
 * with the focus), login (the login form), or novnc (its connect dialog
 * open).
 */
function readyProbe(which) {
  window.__ready = null;
  const shown = (id) => {
    const e = document.getElementById(id);
    return Boolean(e && !e.hidden);
  };
  const usable = {
    deorch: () => shown('console') && document.activeElement && document.activeElement.id === 'q',
    // Logged out: the login form, with the kept key's address if any.
    login: () => shown('login') && (!localStorage.getItem('deorch.key') || document.getElementById('stored-address').textContent !== ''),
    novnc: () => Boolean(document.querySelector('#noVNC_connect_dlg.noVNC_open')),
  }[which];
  const obs = new MutationObserver(() => {
    if (window.__ready === null && usable()) {
      window.__ready = performance.now();
      obs.disconnect();
    }
  });
  obs.observe(document, { subtree: true, childList: true, attributes: true });
}

/** (b) Load to usable, each load in a fresh context (cold cache, new connections). */
async function loadToUsable(url, which, cookies) {
  const samples = [];
  for (let i = 0; i < SAMPLES; i++) {
    const context = await newContext();
    if (cookies) await context.addCookies(cookies);
    await context.addInitScript(readyProbe, which);
    const page = await context.newPage();
    await page.goto(url, { waitUntil: 'commit' });
    await page.waitForFunction(() => window.__ready !== null, null, { timeout: 20000 });
    samples.push(await page.evaluate(() => window.__ready));
    await context.close();
  }
  return stats(samples);
}

const vmYaml = (name, extra = '') =>
  `apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: ${name}\nspec:\n  cpu: 1\n  memory: 64Mi\n${extra}`;

/**
 * Watch #results until `selector` matches (and, with `said`, the results
 * are announced with those words): the time it did (`clock`: Date.now
 * for a clock shared with this process, performance.now otherwise), and
 * the next animation frame's.
 */
function armWatch(page, selector, said, clock) {
  return page.evaluate(
    ([sel, n, c]) => {
      const now = c === 'date' ? () => Date.now() : () => performance.now();
      window.__seen = null;
      window.__frame = null;
      window.__key = null;
      document.addEventListener('keydown', () => (window.__key = window.__key ?? performance.now()), { capture: true, once: true });
      if (window.__obs) window.__obs.disconnect();
      const results = document.getElementById('results');
      const status = document.getElementById('results-status');
      const done = () => document.querySelector(sel) && (n === null || status.textContent.includes(n));
      window.__obs = new MutationObserver(() => {
        if (window.__seen !== null || !done()) return;
        window.__seen = now();
        window.__obs.disconnect();
        requestAnimationFrame(() => (window.__frame = now()));
      });
      window.__obs.observe(results, { childList: true, subtree: true });
    },
    [selector, said, clock],
  );
}

async function seen(page) {
  await page.waitForFunction(() => window.__frame !== null, null, { timeout: 30000 });
  return page.evaluate(() => ({ seen: window.__seen, frame: window.__frame, key: window.__key }));
}

/** The duration of the page's last `POST /v1/command` (its Resource Timing). */
function lastCommandTime(page) {
  return page.evaluate(() => {
    const e = performance.getEntriesByType('resource').filter((r) => r.name.endsWith('/v1/command')).pop();
    performance.clearResourceTimings();
    return e ? e.responseEnd - e.startTime : null;
  });
}

/**
 * (d) Type `prefix`, wait for its answer (`settled`), then time the last
 * key `last` to the results it brings (`selector`, announced `said`).
 */
async function typedToResults(page, prefix, settled, last, selector, said) {
  await typeQuery(prefix);
  await page.locator(settled).first().waitFor();
  await page.waitForTimeout(50);
  await page.evaluate(() => performance.clearResourceTimings());
  await armWatch(page, selector, said, 'perf');
  await page.keyboard.press(last);
  const t = await seen(page);
  return { dom: t.seen - t.key, frame: t.frame - t.key, server: await lastCommandTime(page) };
}

async function main() {
  const page = await open(BASE, [WIF]);

  await step('log in once (the session the measured loads carry)', async () => {
    await page.goto(BASE + '/');
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
  });
  const cookies = (await b.context.cookies()).filter((c) => c.name === 'deorch_session');
  check(cookies.length === 1, 'no session cookie');

  await step('(a) first load, transferred bytes', async () => {
    say('a.deorch.loggedIn', await firstLoad(BASE + '/', 'deorch', cookies));
    say('a.deorch.loggedOut', await firstLoad(BASE + '/', 'login', null));
    say('a.novnc', await firstLoad(NOVNC, 'novnc', null));
  });

  await step(`(b) navigation start to usable, ${SAMPLES} cold loads each`, async () => {
    say('b.deorch.ms', await loadToUsable(BASE + '/', 'deorch', cookies));
    say('b.deorchLogin.ms', await loadToUsable(BASE + '/', 'login', null));
    say('b.novnc.ms', await loadToUsable(NOVNC, 'novnc', null));
  });

  await step(`(c) a change applied with the CLI to its card in the page, ${SAMPLES} times`, async () => {
    await page.goto(BASE + '/?q=vms');
    await page.locator('#live[data-state="on"]').waitFor();
    const shown = [];
    const cliTime = [];
    for (let i = 0; i < SAMPLES; i++) {
      const name = `live-${i}`;
      await armWatch(page, `#results li[data-name="${name}"]`, null, 'date');
      const t0 = Date.now();
      cli(['apply', '-f', '-'], vmYaml(name));
      cliTime.push(Date.now() - t0);
      const t = await seen(page);
      shown.push(t.seen - t0);
      // The next sample starts once this VM's status has settled.
      await page.locator(`#results li[data-name="${name}"] .meta`, { hasText: 'Running' }).waitFor();
    }
    say('c.changeToCard.ms', stats(shown));
    say('c.cliApply.ms', stats(cliTime));
  });

  await step(`(d) ${OBJECTS} VMs in the store`, async () => {
    // Away from `vms`, which would follow every one of them.
    await page.goto(BASE + '/');
    await page.locator('#console').waitFor({ state: 'visible' });
    const t0 = Date.now();
    const batch = 1000;
    for (let i = 0; i < OBJECTS; i += batch) {
      const docs = [];
      for (let j = i; j < Math.min(OBJECTS, i + batch); j++) docs.push(vmYaml(`bulk-${String(j).padStart(5, '0')}`, '  powerState: Stopped\n'));
      cli(['apply', '-f', '-'], docs.join('---\n'));
    }
    const applied = Date.now() - t0;
    // Settled: every one has a status.
    for (;;) {
      const vms = JSON.parse(cli(['get', 'vm', '-o', 'json']));
      const list = Array.isArray(vms) ? vms : vms.items || [vms];
      const done = list.filter((v) => v.status && v.status.phase).length;
      if (done >= OBJECTS) break;
      check(Date.now() - t0 < 600_000, `only ${done} of ${OBJECTS} VMs have a status after 10 min`);
      await page.waitForTimeout(2000);
    }
    say('d.store', { objects: OBJECTS, applyMs: applied, settledMs: Date.now() - t0 });
  });

  await step(`(d) the last key of a query to its results, ${SAMPLES} times each`, async () => {
    await page.goto(BASE + '/');
    await page.locator('#console').waitFor({ state: 'visible' });
    const pick = (i) => String((i * 4999 + 123) % OBJECTS).padStart(5, '0');
    const one = [];
    const search = [];
    const all = [];
    for (let i = 0; i < SAMPLES; i++) {
      const n = pick(i);
      one.push(await typedToResults(page, `vm bulk-${n.slice(0, 4)}`, `#q-error >> text=bulk-${n.slice(0, 4)}\``, n[4], `#results li[data-name="bulk-${n}"]`, `1 result for “vm bulk-${n}”`));
    }
    for (let i = 0; i < SAMPLES; i++) {
      const n = pick(i + SAMPLES);
      search.push(await typedToResults(page, `bulk-${n.slice(0, 4)}`, `#results-status >> text=bulk-${n.slice(0, 4)}”`, n[4], `#results li[data-name="bulk-${n}"]`, `1 result for “bulk-${n}”`));
    }
    for (let i = 0; i < SAMPLES; i++) {
      all.push(await typedToResults(page, 'vm', '#q-error:not([hidden])', 's', '#results li.card', 'results for “vms”'));
    }
    say('d.vms.cards', await page.locator('#results li.card').count());
    for (const [name, xs] of [
      ['vmByName', one],
      ['search', search],
      ['vms', all],
    ]) {
      say(`d.${name}.domMs`, stats(xs.map((x) => x.dom)));
      say(`d.${name}.frameMs`, stats(xs.map((x) => x.frame)));
      say(`d.${name}.commandMs`, stats(xs.map((x) => x.server).filter((x) => x !== null)));
    }
  });

  console.log('FIGURES ' + JSON.stringify(figures));
  await b.browser.close();
}

await run(main);
