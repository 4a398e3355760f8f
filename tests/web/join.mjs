// A join request approved in the page (tests/web_ui.rs posts a request
// signed by a new machine's key): the owner logs in with a key kept in the
// page, `nodes` shows the request with an Approve button, which writes
// `approve NAME`; the plan says what is signed; Enter signs the members
// policy's next generation in the browser and pushes it. The key never
// leaves the page; the node checks the signature as any.
//
//   DEORCH_URL, DEORCH_WIF, DEORCH_ADDRESS   the node and the owner's key
//   DEORCH_JOINER    the name the new machine asked for
//   DEORCH_SHOTS     where the screenshot goes (docs/ui)

import { join } from 'node:path';
import { env, open, run, check, step, tabTo, focusedIs, typeQuery, textOf, axe, finalChecks } from './lib.mjs';

const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const JOINER = env('DEORCH_JOINER');

async function main() {
  const page = await open(BASE, [WIF]);
  const pushes = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/manifests')) pushes.push(JSON.parse(r.postData() || '{}'));
  });

  await step('log in with the owner\'s key', async () => {
    await page.goto(BASE + '/');
    await page.locator('#login').waitFor({ state: 'visible' });
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `logged in as ${await textOf('#who')}`);
  });

  await step('`nodes` lists the machine asking to join', async () => {
    await typeQuery('nodes');
    await page.keyboard.press('Enter');
    const card = page.locator(`li.card[data-kind="JoinRequest"][data-name="${JOINER}"]`);
    await card.waitFor();
    check((await card.textContent()).includes('Asks to join'), 'the card does not say it asks to join');
  });
  await step('axe-core: the join request', () => axe('join request'));

  await step('its Approve button writes `approve NAME`; the plan says what is signed', async () => {
    await tabTo(`button[data-approve="${JOINER}"]`, 40);
    await page.keyboard.press('Enter');
    check((await page.inputValue('#q')) === `approve ${JOINER}`, `the command line says ${await page.inputValue('#q')}`);
    await page.locator('#plan-summary', { hasText: `Admit ${JOINER}` }).waitFor();
    const summary = await textOf('#plan-summary');
    check(summary.includes('generation 2') && summary.includes('signed by your key'), `the plan says: ${summary}`);
    check((await textOf('#plan-cli')).startsWith(`deorch node approve ${JOINER}`), 'no CLI equivalent');
    check(await focusedIs('#q'), 'the command line does not have the focus');
    await page.screenshot({ path: join(env('DEORCH_SHOTS'), 'join.png'), fullPage: true });
  });
  await step('axe-core: the approval plan', () => axe('approval plan'));

  await step('Enter signs in the page and pushes the signed policy', async () => {
    await page.keyboard.press('Enter');
    await page.locator('#applied', { hasText: 'AccessPolicy' }).waitFor();
    check(pushes.length === 1, `${pushes.length} pushes`);
    const a = pushes[0].metadata.annotations || {};
    check(a['deorch.dev/signer'] === ADDRESS, `signed by ${a['deorch.dev/signer']}`);
    check(typeof a['deorch.dev/signature'] === 'string' && a['deorch.dev/signature'].length > 80, 'no signature');
    check(pushes[0].spec.satellites.some((s) => s.name === JOINER), 'the pushed policy does not list the joiner');
    check((await textOf('#plan-changes')) === 'Applied', 'the plan does not say Applied');
  });

  await step('`nodes` again: nobody waits any more', async () => {
    await typeQuery('nodes');
    await page.keyboard.press('Enter');
    await page.locator('#results-status', { hasText: 'result' }).waitFor();
    await page.waitForTimeout(500);
    check((await page.locator('li.card[data-kind="JoinRequest"]').count()) === 0, 'the request is still shown');
  });

  await finalChecks();
}

await run(main);
