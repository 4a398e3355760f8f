// The page of one node of two, opened by chromium on a third machine (its
// own network namespace), as tests/relocate_nodes.rs starts it: the owner
// logs in, types `relocate mover` (no target: the radar elects the
// receiver), reads the plan, runs it with Enter and watches the VM's card
// follow it to the other node; then `nodes` offers the other node's page,
// which takes the session over (the cookie is per host).
//
//   DEORCH_URL       https://A:8443 (the VM's node)
//   DEORCH_WIF       the cluster owner's key, imported in the page
//   DEORCH_ADDRESS   its P2WPKH address
//   DEORCH_TO        the other node's name
//   DEORCH_TO_URL    https://B:8443 (its page)
//   DEORCH_SHOTS     where the screenshots go (docs/ui)
//   (and lib.mjs's)

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { b, env, open, run, check, step, tabTo, focusedIs, typeQuery, textOf } from './lib.mjs';

const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const TO = env('DEORCH_TO');
const TO_URL = env('DEORCH_TO_URL');
const SHOTS = env('DEORCH_SHOTS');

mkdirSync(SHOTS, { recursive: true });
let page;

const shot = (name) => page.screenshot({ path: join(SHOTS, name), fullPage: true });
const card = (name) => page.locator(`#results li[data-name="${name}"]`);

async function main() {
  page = await open(BASE, [WIF]);

  await step('log in with the owner\'s key', async () => {
    const r = await page.goto(BASE + '/');
    check(r.status() === 200, `GET / answered ${r.status()}`);
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `the page shows ${await textOf('#who')}`);
  });

  await step('type "relocate mover": the plan names no node', async () => {
    await typeQuery('relocate mover');
    await page.locator('#plan[data-verb="relocate"]').waitFor();
    await page.locator('#plan-changes.changes').waitFor();
    const cli = await textOf('#plan-cli');
    check(cli.startsWith('deorch relocate mover'), `the plan's CLI is "${cli}"`);
    await shot('relocate-plan.png');
  });

  await step('Enter runs it: the card follows the VM to the other node', async () => {
    check(await focusedIs('#q'), 'the search bar does not have the focus');
    await page.keyboard.press('Enter');
    await page.locator('#applied', { hasText: 'Relocation' }).waitFor();
    await typeQuery('vm mover');
    // This node no longer runs it: its card says where it runs now (the
    // receiver's gossiped status), and that node's page says Running.
    await card('mover').filter({ hasText: 'node ' + TO }).filter({ hasText: 'Elsewhere' }).waitFor({ timeout: 120_000 });
    await shot('relocated.png');
  });

  await step(`"nodes": open ${TO}'s page, the session handed over`, async () => {
    await typeQuery('nodes');
    const open = card(TO).getByRole('button', { name: new RegExp('Open on ' + TO) });
    await open.waitFor({ timeout: 30_000 });
    await open.focus();
    await page.keyboard.press('Enter');
    await page.waitForURL((u) => u.origin === new URL(TO_URL).origin);
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `${TO}'s page shows ${await textOf('#who')}`);
    check(new URL(page.url()).hash === '', `the hand-over token stays in the URL: ${page.url()}`);
    const cookies = await b.context.cookies(TO_URL);
    check(cookies.some((c) => c.name === 'deorch_session'), `no session cookie for ${TO_URL}`);
    await typeQuery('vm mover');
    await card('mover').filter({ hasText: TO }).filter({ hasText: 'Running' }).waitFor({ timeout: 30_000 });
    await shot('switched.png');
  });

  await step('no script error, no CSP refusal, no secret sent', async () => {
    const { errors, leaks } = b.watch;
    const violations = await page.evaluate(() => window.__violations);
    check(violations.length === 0, `the CSP refused: ${violations.join('; ')}`);
    check(errors.length === 0, errors.join('; '));
    check(leaks.length === 0, `a secret left the browser: ${leaks.join(', ')}`);
  });
}

run(main);
