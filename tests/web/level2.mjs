// Level 2 in the page (tests/web_ui.rs starts a node whose AccessPolicy
// asks a real slapd for the user's directory password): the user's key
// alone gets `PasswordRequired`, the page asks the password, a wrong one
// shows the node's refusal and asks again, the right one logs in with a
// level-2 session. Keyboard only; the password goes in the login request
// and nowhere else.
//
//   DEORCH_URL, DEORCH_WIF, DEORCH_ADDRESS   the node and the user's key
//   DEORCH_PASSWORD  the user's directory password
//   DEORCH_SHOTS     where the screenshot of the prompt goes (docs/ui)

import { join } from 'node:path';
import { env, open, run, check, step, tabTo, focusedIs, textOf, axe, fetchStatus, finalChecks } from './lib.mjs';

const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const PASSWORD = env('DEORCH_PASSWORD');
const WRONG = 'not the password';

async function main() {
  const page = await open(BASE, [WIF, { text: PASSWORD, only: ['/v1/auth/login'] }, { text: WRONG, only: ['/v1/auth/login'] }]);
  const logins = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/auth/login')) logins.push(JSON.parse(r.postData() || '{}'));
  });

  await step('the key alone: the node asks the directory password', async () => {
    await page.goto(BASE + '/');
    await page.locator('#login').waitFor({ state: 'visible' });
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#password-form').waitFor({ state: 'visible' });
    await page.locator('#login-status', { hasText: 'directory password' }).waitFor();
    check(await focusedIs('#password'), 'the password field does not have the focus');
    check(logins.length === 1 && !('password' in logins[0]), 'the first login sent a password');
    check(await page.locator('#session').isHidden(), 'logged in without the password');
    await page.screenshot({ path: join(env('DEORCH_SHOTS'), 'level2.png'), fullPage: true });
  });
  await step('axe-core: the password prompt', () => axe('level 2'));

  await step('a wrong password: the node\'s refusal, and the field again', async () => {
    await page.keyboard.type(WRONG);
    await page.keyboard.press('Enter');
    await page.locator('#login-status', { hasText: 'Level2Refused' }).waitFor();
    const said = await textOf('#login-status');
    check(said.includes('directory login failed'), `the node's error is not shown: ${said}`);
    check((await page.getAttribute('#password', 'aria-invalid')) === 'true', 'the field is not marked invalid');
    check(await focusedIs('#password'), 'the password field does not have the focus again');
    check((await page.inputValue('#password')) === '', 'the wrong password stays in the field');
    check(await page.locator('#session').isHidden(), 'logged in with a wrong password');
    check(logins.length === 2 && logins[1].password === WRONG, 'the wrong password was not sent with a new signature');
  });

  await step('the right password: logged in at level 2', async () => {
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `the page shows ${await textOf('#who')}, not ${ADDRESS}`);
    check(await focusedIs('#q'), 'the search bar does not have the focus after login');
    const w = await fetchStatus('GET', '/v1/auth/whoami');
    check(w.status === 200 && JSON.parse(w.body).level2 === true, `whoami: ${w.status} ${w.body}`);
    check(await page.locator('#password-form').isHidden(), 'the password prompt stays after login');
    check((await page.inputValue('#password')) === '', 'the password stays in the page');
  });

  await finalChecks();
}

await run(main);
