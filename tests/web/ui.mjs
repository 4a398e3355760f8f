// Drives the page a node serves at `/` in Debian's headless chromium,
// with the keyboard only, as tests/web_ui.rs starts it (the node, its
// owner's key and the paths come in the environment). Prints one line per
// step with its time; exits non-zero at the first failed step, with a
// screenshot of the page at that moment.
//
//   DEORCH_URL       https://127.0.0.1:PORT (self-signed certificate)
//   DEORCH_WIF       a key the node admits (the cluster owner's), imported in the page
//   DEORCH_ADDRESS   its P2WPKH address, which the page must show
//   DEORCH_NODE      the node's name (its Satellite)
//   DEORCH_BIN, DEORCH_SOCKET   the CLI and the node's socket, to change the
//                    store from outside the browser (live updates)
//   DEORCH_KEY_FILE  the owner's key as a file: `deorch sign` with it is the
//                    external wallet (a signer outside the page)
//   DEORCH_SHOTS     where the screenshots go (docs/ui)
//   (and lib.mjs's)

import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { b, env, open, run, check, step, tabTo, checkFocusVisible, focusedIs, typeQuery, textOf, axe, fetchStatus, finalChecks, watchPage, checkWatched } from './lib.mjs';

const BASE = env('DEORCH_URL');
const WIF = env('DEORCH_WIF');
const ADDRESS = env('DEORCH_ADDRESS');
const NODE = env('DEORCH_NODE');
const SHOTS = env('DEORCH_SHOTS');
const KEY_FILE = env('DEORCH_KEY_FILE');
// The same node under another name: another origin, so another cookie
// jar and another localStorage (its certificate names localhost too).
const OTHER = BASE.replace('://127.0.0.1:', '://localhost:');

/**
 * The external wallet: `deorch sign` (the CLI's signer, k256 in Rust, a
 * process of its own) signs `message` with the owner's key. `--type
 * p2pkh` gives the compressed-key header 31-34 that Electrum writes for
 * every address type, here for the owner's bc1q address.
 */
function walletSign(message) {
  return execFileSync(env('DEORCH_BIN'), ['sign', '--key', KEY_FILE, '--type', 'p2pkh', '--message-file', '-'], { input: message })
    .toString()
    .trim();
}

mkdirSync(SHOTS, { recursive: true });
let page;

async function shot(name) {
  await page.screenshot({ path: join(SHOTS, name), fullPage: true });
}

const card = (name) => page.locator(`#results li[data-name="${name}"]`);

/** The page's URL ends with `?q=` and `q` as `deorch url` writes it. */
async function urlSays(q) {
  const want = '/?q=' + encodeURIComponent(q);
  await page.waitForURL((u) => u.pathname + u.search === want);
}

/** Show `vm web1` (typed) and wait for its card. */
async function showVm(name) {
  await typeQuery('vm ' + name);
  await page.locator('#plan[data-verb="get"]').waitFor();
  await card(name).waitFor();
}

/** The plan on show is `verb`, the bar holds `line`, its CLI starts `cli`; Enter applies it. */
async function planShows(verb, line, cli) {
  await page.locator(`#plan[data-verb="${verb}"]`).waitFor();
  await page.locator('#plan-changes.changes').waitFor();
  check((await page.inputValue('#q')).trim() === line, `the bar holds "${await page.inputValue('#q')}", not "${line}"`);
  const shown = await textOf('#plan-cli');
  check(shown.startsWith(cli), `the plan's CLI is "${shown}", not "${cli}…"`);
}

async function enterApplies(object) {
  check(await focusedIs('#q'), 'the search bar does not have the focus: Enter would not run the plan');
  await page.keyboard.press('Enter');
  await page.locator('#applied', { hasText: object }).waitFor();
}

/** The signature `sig` pasted (Ctrl+V from the clipboard, where a wallet puts it) in the focused field. */
async function paste(sig) {
  await page.evaluate((t) => navigator.clipboard.writeText(t), sig);
  await page.keyboard.press('Control+V');
  check((await page.inputValue('#wallet-signature')) === sig, `the pasted signature is "${await page.inputValue('#wallet-signature')}"`);
}

/** The message on show: copied with the page's button, read from the clipboard. */
async function copyMessage() {
  await tabTo('#wallet-copy');
  await page.keyboard.press('Enter');
  await page.locator('#wallet-status', { hasText: 'Copied the message' }).waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied === (await page.inputValue('#wallet-message')), 'the clipboard does not hold the message on show');
  return copied;
}

async function main() {
  // Secrets no request may carry; hand-over tokens join as they are made.
  const secrets = [WIF];
  page = await open(BASE, secrets);
  const { context } = b;
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });

  await step('a link to a query, opened logged out: the login keeps it', async () => {
    const r = await page.goto(BASE + '/?q=nodes');
    check(r.status() === 200, `GET / answered ${r.status()}`);
    const csp = r.headers()['content-security-policy'] || '';
    check(csp.includes("default-src 'none'"), `no strict CSP: ${csp}`);
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#console').isHidden(), 'the command line shows before login');
    check((await textOf('#pending-query')) === 'nodes', 'the login does not say it will run the query of the URL');
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

  await step('import the owner\'s WIF: logged in, and the query of the URL runs', async () => {
    await tabTo('#wif');
    await page.keyboard.type(WIF);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `the page shows ${await textOf('#who')}, not ${ADDRESS}`);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'deorch_session');
    check(session && session.httpOnly && session.secure, `no HttpOnly Secure session cookie: ${JSON.stringify(cookies)}`);
    check((await page.evaluate(() => localStorage.getItem('deorch.key'))) === WIF, 'the key is not kept in localStorage');
    check(await focusedIs('#q'), 'the search bar does not have the focus after login');
    await checkFocusVisible('the search bar');
    // Nothing typed: `?q=nodes` from the URL.
    await card(NODE).waitFor();
    check((await page.inputValue('#q')) === 'nodes', `the bar holds "${await page.inputValue('#q')}"`);
  });

  await step('type "nodes": the node\'s card', async () => {
    await typeQuery('nodes');
    await card(NODE).waitFor();
    check((await textOf('#plan-cli')).startsWith('deorch '), `CLI shown: ${await textOf('#plan-cli')}`);
    check((await textOf('#results-status')).includes('result'), 'the results are not announced');
    check((await card(NODE).locator('h3 a').getAttribute('href')) === '?q=node%20' + encodeURIComponent(NODE), 'the node\'s card does not link to its query');
    await shot('results.png');
  });
  await step('axe-core: logged in, with results', () => axe('logged in'));

  await step('a parse error is shown with its column', async () => {
    await typeQuery('create vm web1 frm tiny');
    await page.locator('#q-error.error', { hasText: 'Column' }).waitFor();
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

  await step('type "vms": web1 is listed, and the URL says the query', async () => {
    await typeQuery('vms');
    await card('web1').waitFor();
    await page.locator('#live[data-state="on"]').waitFor();
    await urlSays('vms');
    await shot('vms.png');
  });

  await step('a change made outside the page shows without typing', async () => {
    const yaml = 'apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web2\nspec:\n  cpu: 1\n  memory: 64Mi\n';
    execFileSync(env('DEORCH_BIN'), ['apply', '-f', '-'], {
      input: yaml,
      env: { ...process.env, DEORCH_SOCKET: env('DEORCH_SOCKET') },
    });
    await card('web2').waitFor();
    // Its status follows as the node starts it (the fake hypervisor).
    await card('web2').locator('.meta', { hasText: 'Running' }).waitFor();
    check((await page.inputValue('#q')) === 'vms', 'the query changed');
    await shot('live.png');
  });

  await step('a card links to its own query: Enter on it shows the VM, Back the list', async () => {
    await tabTo('#results li[data-name="web1"] h3 a', 30);
    check((await page.getAttribute('#results li[data-name="web1"] h3 a', 'href')) === '?q=vm%20web1', 'the link is not ?q=vm%20web1');
    await page.keyboard.press('Enter');
    await page.locator('#plan[data-verb="get"]').waitFor();
    await urlSays('vm web1');
    check((await page.inputValue('#q')) === 'vm web1', `the bar holds "${await page.inputValue('#q')}"`);
    check(await focusedIs('#q'), 'the bar does not have the focus after following a card');
    await card('web1').locator('dl.status').waitFor();
    await page.goBack();
    await urlSays('vms');
    await card('web2').waitFor();
    check((await page.inputValue('#q')) === 'vms', 'Back does not bring the list back');
  });

  await step('a ?q= URL opened directly shows its results (and, logged in, loads no crypto)', async () => {
    const loaded = [];
    const watch = (r) => loaded.push(new URL(r.url()).pathname);
    page.on('request', watch);
    await page.goto(BASE + '/?q=vm%20web1');
    await card('web1').locator('dl.status dt', { hasText: 'Ready' }).waitFor();
    page.off('request', watch);
    check(loaded.includes('/assets/app.js'), `the page's requests were not seen: ${loaded.join(' ')}`);
    check(!loaded.includes('/assets/crypto.js'), 'a page with a session loaded the login\'s crypto');
    check((await page.inputValue('#q')) === 'vm web1', `the bar holds "${await page.inputValue('#q')}"`);
    check((await page.locator('#results li').count()) === 1, 'more than web1 shows');
    check(await focusedIs('#q'), 'the search bar does not have the focus');
  });

  await step('a ?q= URL of a change shows its plan and does not run it', async () => {
    const runs = [];
    const watch = (r) => {
      if (r.url().endsWith('/v1/command') && JSON.parse(r.postData() || '{}').run) runs.push(r.postData());
    };
    page.on('request', watch);
    await page.goto(BASE + '/?q=stop%20web1');
    await page.locator('#plan[data-verb="stop"] #plan-changes.changes').waitFor();
    await card('web1').locator('.meta', { hasText: 'Running' }).waitFor();
    await page.waitForTimeout(300);
    page.off('request', watch);
    check(runs.length === 0, `opening the link ran ${runs.join(', ')}`);
    await typeQuery('vm web1');
    await card('web1').locator('.meta', { hasText: 'Running' }).waitFor();
  });

  await step('a replica by typing: "replica web1 r1"', async () => {
    await typeQuery('replica web1 r1');
    await planShows('replica', 'replica web1 r1', 'deorch replica create web1 --name r1');
    await enterApplies('Replica/default/r1');
  });

  await step('a replica by the VM\'s button', async () => {
    await showVm('web1');
    await tabTo('#results li[data-name="web1"] button[data-verb="replica"]', 30);
    check((await page.getAttribute('#results li[data-name="web1"] .actions', 'aria-label')) === 'Actions on VM web1', 'the card\'s buttons are not labelled');
    await page.keyboard.press('Enter');
    check(await focusedIs('#q'), 'the button leaves the focus off the bar');
    await planShows('replica', 'replica web1', 'deorch replica create web1');
    await enterApplies('Replica/default/web1-');
  });

  let stamped;
  await step('"replicas of web1": both, ready', async () => {
    await typeQuery('replicas of web1');
    await page.locator('#results li[data-kind="Replica"][data-name="r1"] .meta', { hasText: 'Ready' }).waitFor();
    const other = page.locator('#results li[data-kind="Replica"][data-name^="web1-"]');
    await other.locator('.meta', { hasText: 'Ready' }).waitFor();
    stamped = await other.getAttribute('data-name');
    check((await page.locator('#results li').count()) === 2, 'not two replicas');
  });

  await step('revert by typing: "revert web1 to r1", and the VM reports it', async () => {
    await typeQuery('revert web1 to r1');
    await planShows('revert', 'revert web1 to r1', 'deorch replica revert r1');
    await enterApplies('VirtualMachine/default/web1');
    await showVm('web1');
    await card('web1').locator('dl.status dd', { hasText: /^to replica r1 \(generation \d+\)$/ }).waitFor();
    await card('web1').locator('dl.status dd', { hasText: 'disks reverted to replica r1' }).waitFor();
    await shot('vm.png');
  });

  await step('revert by the VM\'s button, the replica picked from the suggestions', async () => {
    await tabTo('#results li[data-name="web1"] button[data-verb="revert"]', 30);
    await page.keyboard.press('Enter');
    check((await page.inputValue('#q')) === 'revert web1 to ', `the button wrote "${await page.inputValue('#q')}"`);
    const option = page.locator('#suggestions li[role=option]', { hasText: stamped });
    await option.waitFor();
    check((await page.locator('#suggestions li[role=option]').count()) === 2, 'the suggestions are not the two replicas');
    // Unfinished is not wrong: a hint, the bar not marked invalid.
    await page.locator('#q-error.hint', { hasText: "replica's name" }).waitFor();
    check((await page.getAttribute('#q', 'aria-invalid')) === null, 'an unfinished line is marked invalid');
    await shot('revert.png');
    for (let i = 0; i < 3 && (await option.getAttribute('aria-selected')) !== 'true'; i++) await page.keyboard.press('ArrowDown');
    await page.keyboard.press('Enter');
    await planShows('revert', 'revert web1 to ' + stamped, 'deorch replica revert ' + stamped);
    await enterApplies('VirtualMachine/default/web1');
    await showVm('web1');
    await card('web1').locator('dl.status dd', { hasText: new RegExp(`^to replica ${stamped} \\(generation \\d+\\)$`) }).waitFor();
  });

  await step('stop and start web1 with its buttons', async () => {
    check((await card('web1').locator('button[data-verb="start"]').count()) === 0, 'a running VM offers Start');
    await tabTo('#results li[data-name="web1"] button[data-verb="stop"]', 30);
    await page.keyboard.press('Enter');
    await planShows('stop', 'stop web1', 'deorch ');
    await enterApplies('VirtualMachine/default/web1');
    await showVm('web1');
    await card('web1').locator('.meta', { hasText: 'Stopped' }).waitFor();
    check((await card('web1').locator('button[data-verb="stop"]').count()) === 0, 'a stopped VM offers Stop');
    await tabTo('#results li[data-name="web1"] button[data-verb="start"]', 30);
    await page.keyboard.press('Enter');
    await planShows('start', 'start web1', 'deorch ');
    await enterApplies('VirtualMachine/default/web1');
    await showVm('web1');
    await card('web1').locator('.meta', { hasText: 'Running' }).waitFor();
  });

  await step('the buttons beside the command line act on the VM on show', async () => {
    await showVm('web1');
    check((await textOf('#actions-label')) === 'Actions on VM web1', `the actions say "${await textOf('#actions-label')}"`);
    await tabTo('#actions button[data-verb="relocate"]');
    check((await textOf('#actions button[data-verb="relocate"]')) === 'Auto Relocate', 'no "Auto Relocate"');
    await page.keyboard.press('Enter');
    await planShows('relocate', 'relocate web1', 'deorch relocate web1');
    await shot('actions.png');
    await tabTo('#actions button[data-verb="console"]');
    await page.keyboard.press('Enter');
    await page.locator('#plan[data-verb="console"]').waitFor();
    check((await textOf('#plan-cli')) === 'deorch console web1', `the console's CLI is "${await textOf('#plan-cli')}"`);
    check((await page.inputValue('#q')) === 'console web1', 'the bar does not hold "console web1"');
    // No VM on show: the verb alone, and the suggestions name the VMs.
    await typeQuery('nodes');
    await card(NODE).waitFor();
    await page.locator('#actions-label', { hasText: 'pick a VM' }).waitFor();
    await tabTo('#actions button[data-verb="start"]');
    await page.keyboard.press('Enter');
    await page.locator('#suggestions li[role=option]', { hasText: 'start web1' }).waitFor();
    check((await page.inputValue('#q')) === 'start ', `the bar holds "${await page.inputValue('#q')}"`);
  });
  await step('axe-core: a VM with its status and buttons', async () => {
    await showVm('web1');
    await card('web1').locator('dl.status').waitFor();
    await axe('a VM');
  });

  await step('log out: the node clears the cookie, the session is refused, a reload stays logged out', async () => {
    const logout = page.waitForResponse((r) => r.url().endsWith('/v1/auth/logout') && r.request().method() === 'POST');
    await tabTo('#logout', 60);
    await page.keyboard.press('Enter');
    check((await logout).status() === 200, 'POST /v1/auth/logout did not answer 200');
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#console').isHidden(), 'the command line stays after logout');
    const cookies = await context.cookies();
    check(!cookies.some((c) => c.name === 'deorch_session'), `the session cookie is still kept: ${JSON.stringify(cookies)}`);
    const r = await fetchStatus('POST', '/v1/command', { q: 'vms', run: false });
    check(r.status === 401, `a command after logout answered ${r.status}: ${r.body}`);
    check(new URL(page.url()).search === '', `the URL still holds a query: ${page.url()}`);
    await page.reload();
    await page.locator('#login').waitFor({ state: 'visible' });
    check(await page.locator('#session').isHidden(), 'logged in again after a reload');
    await page.locator('#stored-address', { hasText: ADDRESS }).waitFor();
    await shot('logged-out.png');
  });

  // ------------------------------------------------ an external wallet

  const logins = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/auth/login')) logins.push(JSON.parse(r.postData() || '{}'));
  });

  await step('forget the kept key: the page holds no key', async () => {
    await tabTo('#forget');
    await page.keyboard.press('Enter');
    await page.locator('#stored').waitFor({ state: 'hidden' });
    check((await page.evaluate(() => localStorage.getItem('deorch.key'))) === null, 'the key is still kept');
  });

  let first;
  await step('external wallet: the address typed, the message to sign shown and copied', async () => {
    await tabTo('#wallet-address');
    await page.keyboard.type(ADDRESS);
    await page.keyboard.press('Enter');
    await page.locator('#wallet-sign').waitFor({ state: 'visible' });
    first = await page.inputValue('#wallet-message');
    const lines = first.split('\n');
    check(lines.length === 5 && lines[0] === 'deorch login' && /^nonce: [0-9a-f]{32}$/.test(lines[4]), `the message is not a challenge: ${JSON.stringify(first)}`);
    check(lines[1] === 'cluster: ' + ADDRESS, `the message names cluster ${lines[1]}`);
    check(await focusedIs('#wallet-message'), 'the message does not have the focus');
    check(await page.evaluate(() => { const m = document.getElementById('wallet-message'); return m.selectionStart === 0 && m.selectionEnd === m.value.length; }), 'the message is not selected whole');
    check((await page.getAttribute('#wallet-message', 'readonly')) !== null, 'the message can be edited');
    check((await textOf('#wallet-expiry')).includes('for 8 s'), `the lifetime is not said: ${await textOf('#wallet-expiry')}`);
    check((await textOf('#wallet-signature-help')).includes('BIP-322'), 'the hint does not say what the node takes');
    check((await copyMessage()) === first, 'another message was copied');
    await tabTo('#wallet-signature');
    await paste(walletSign('not the message the node gave'));
    await shot('wallet.png');
  });

  let second;
  await step('a wrong signature: refused, said in an alert, and a new message to sign', async () => {
    await page.keyboard.press('Enter');
    const alert = page.locator('#wallet-error[role="alert"]');
    await alert.waitFor({ state: 'visible' });
    const said = await alert.textContent();
    check(said.includes('BadSignature') && said.includes('new message'), `the refusal says: ${said}`);
    check((await page.getAttribute('#wallet-signature', 'aria-invalid')) === 'true', 'the signature field is not marked invalid');
    second = await page.inputValue('#wallet-message');
    check(second !== first && second.startsWith('deorch login\n'), 'no new message after the refusal');
    check(await focusedIs('#wallet-message'), 'the new message does not have the focus');
    check(await page.locator('#session').isHidden(), 'logged in with a wrong signature');
    check(logins.length === 1 && logins[0].challenge === first && logins[0].address === ADDRESS, `the login sent ${JSON.stringify(logins)}`);
    await shot('wallet-refused.png');
  });
  await step('axe-core: the external wallet panel with a refusal', () => axe('external wallet'));

  await step('the message expires: the page says so, and the node refuses a signature of it', async () => {
    await page.locator('#wallet-expiry.err', { hasText: 'expired' }).waitFor({ timeout: 12_000 });
    await page.locator('#wallet-status', { hasText: 'expired' }).waitFor();
    await tabTo('#wallet-signature');
    await paste(walletSign(second));
    await page.keyboard.press('Enter');
    await page.locator('#wallet-error', { hasText: 'ChallengeExpired' }).waitFor();
    check(await page.locator('#session').isHidden(), 'logged in with an expired message');
    check((await page.inputValue('#wallet-message')) !== second, 'no new message after the expiry');
  });

  let signature;
  await step('signed outside the page (deorch sign, Electrum\'s header) and pasted: logged in', async () => {
    const message = await copyMessage();
    signature = walletSign(message);
    check(Buffer.from(signature, 'base64')[0] >= 31 && Buffer.from(signature, 'base64')[0] <= 34, 'not an Electrum-style header');
    await tabTo('#wallet-signature');
    await paste(signature);
    await page.keyboard.press('Enter');
    await page.locator('#session').waitFor({ state: 'visible' });
    check((await textOf('#who')) === ADDRESS, `the page shows ${await textOf('#who')}, not ${ADDRESS}`);
    const sent = logins[logins.length - 1];
    check(sent.signature === signature && sent.challenge === message && sent.address === ADDRESS, `the login sent ${JSON.stringify(sent)}`);
    check((await page.evaluate(() => localStorage.getItem('deorch.key'))) === null, 'a key is kept in the page');
    check(await focusedIs('#q'), 'the search bar does not have the focus after login');
    check(await page.locator('#login').isHidden(), 'the login stays on show');
  });

  // ------------------------------------------------ hand-over between origins

  const page2 = await context.newPage();
  // Hand-over tokens go to /v1/auth/adopt in a body, in no URL.
  const tokens = [];
  const watch2 = await watchPage(page2, tokens);
  const adopts = () => watch2.requests.filter((r) => r.path === '/v1/auth/adopt');
  const one = page;

  await step('a bogus hand-over token: refused, said on the login, gone from the URL', async () => {
    const r = await page2.goto(OTHER + '/#adopt=not-a-hand-over-token');
    check(r.status() === 200, `GET / on ${OTHER} answered ${r.status()}`);
    await page2.locator('#login-alert[role="alert"]', { hasText: 'BadHandOver' }).waitFor();
    check(await page2.locator('#session').isHidden(), 'logged in with a bogus token');
    check(!page2.url().includes('#'), `the fragment stays: ${page2.url()}`);
    check(adopts().length === 1 && JSON.parse(adopts()[0].body).token === 'not-a-hand-over-token', 'the token was not posted to /v1/auth/adopt');
  });

  await step('a session cookie as a hand-over token (the open page, a new fragment): refused', async () => {
    const cookie = (await context.cookies(BASE)).find((c) => c.name === 'deorch_session');
    check(cookie, 'no session cookie on ' + BASE);
    await page2.goto(OTHER + '/#adopt=' + cookie.value);
    await page2.locator('#login-alert[role="alert"]', { hasText: 'not a hand-over token' }).waitFor();
    check(!page2.url().includes('#'), `the fragment stays: ${page2.url()}`);
    check(adopts().length === 2, `${adopts().length} adopt requests`);
    const c2 = await context.cookies(OTHER);
    check(!c2.some((c) => c.name === 'deorch_session'), 'a session cookie on ' + OTHER);
    b.page = page2;
    await page2.screenshot({ path: join(SHOTS, 'adopt-refused.png'), fullPage: true });
    await axe('a refused hand-over');
    b.page = one;
  });

  await step('hand the session over: #adopt=TOKEN on the other origin logs in there, the fragment gone', async () => {
    // The token names the node that is to adopt it: this one, under its
    // other origin (its address, as the page's footer shows it).
    const here = (await textOf('#node-address')).trim();
    check(/^bc1q/.test(here), `the footer shows the node as "${here}"`);
    const h = await fetchStatus('POST', '/v1/auth/handover', { to: here });
    check(h.status === 200, `handover answered ${h.status}: ${h.body}`);
    const { token, expires } = JSON.parse(h.body);
    check(token && expires > Date.now() / 1000, `handover gave ${h.body}`);
    tokens.push({ text: token, only: ['/v1/auth/adopt'] });
    secrets.push(token);
    // A fresh load, as a link from another page opens it.
    await page2.goto('about:blank');
    await page2.goto(OTHER + '/#adopt=' + token);
    await page2.locator('#session').waitFor({ state: 'visible' });
    check((await page2.locator('#who').textContent()) === ADDRESS, 'the other origin shows another address');
    check(page2.url() === OTHER + '/', `the URL is ${page2.url()}`);
    check((await page2.evaluate(() => location.hash)) === '', 'the fragment stays');
    const last = adopts()[adopts().length - 1];
    check(adopts().length === 3 && JSON.parse(last.body).token === token && last.method === 'POST', 'the token was not posted once to /v1/auth/adopt');
    const cookie = (await context.cookies(OTHER)).find((c) => c.name === 'deorch_session');
    check(cookie && cookie.httpOnly && cookie.secure && cookie.domain === 'localhost', `no session cookie of its own on ${OTHER}: ${JSON.stringify(cookie)}`);
    const w = await page2.evaluate(async () => {
      const r = await fetch('/v1/auth/whoami');
      return { status: r.status, body: await r.json() };
    });
    check(w.status === 200 && w.body.address === ADDRESS, `whoami on ${OTHER}: ${JSON.stringify(w)}`);
    await page2.locator('#live[data-state="on"]').waitFor();
    check((await page2.locator('#results-status').textContent()).includes('handed over'), 'the page does not say the session was handed over');
    // A reload: the session is the cookie now, the token is not asked again.
    await page2.reload();
    await page2.locator('#session').waitFor({ state: 'visible' });
    check(adopts().length === 3, 'the reload posted a token again');
    // The same token once more (read on its way, say): refused, the
    // session this page has is kept.
    const again = await page2.evaluate(async (t) => {
      const r = await fetch('/v1/auth/adopt', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: t }) });
      return { status: r.status, body: await r.json() };
    }, token);
    check(again.status === 401 && again.body.code === 'BadHandOver' && /already used/.test(again.body.error), `a used token adopted again: ${JSON.stringify(again)}`);
  });

  await step('"Open on NODE" on a node\'s card: handed over to that page, logged in there', async () => {
    // Log out on the first origin: only the hand-over can log it in again.
    await tabTo('#logout', 60);
    await page.keyboard.press('Enter');
    await page.locator('#login').waitFor({ state: 'visible' });
    check((await fetchStatus('GET', '/v1/auth/whoami')).status === 401, 'still a session on ' + BASE);
    // One node has no other page: this node's row gets its page on the
    // first origin (as the nodes of a cluster have theirs) unless the
    // node already says one.
    let added = false;
    await page2.route('**/v1/command', async (route) => {
      const response = await route.fetch();
      const json = await response.json();
      for (const r of json.results || []) {
        if (r.kind === 'Satellite' && !r.url) {
          r.url = BASE + '/';
          added = true;
        }
      }
      await route.fulfill({ response, json });
    });
    b.page = page2;
    await typeQuery('nodes');
    const button = page2.locator(`#results li[data-name="${NODE}"] button.open-node`);
    await button.waitFor();
    console.log(`  the node's row url: ${added ? 'added by the test (this node gossips no page)' : 'from the node'}`);
    check((await button.textContent()) === 'Open on ' + NODE, `the button says "${await button.textContent()}"`);
    const title = await button.getAttribute('title');
    check(title.includes('Hands this session over') && title.includes(new URL(BASE).host), `the button's title: ${title}`);
    await tabTo(`#results li[data-name="${NODE}"] button.open-node`, 40);
    await page2.screenshot({ path: join(SHOTS, 'open-on-node.png'), fullPage: true });
    await axe('a node with another page');
    // The token the node hands over, read on its way to the page (the
    // page leaves at once, its responses with it).
    let token = null;
    await page2.route(OTHER + '/v1/auth/handover', async (route) => {
      const response = await route.fetch();
      token = (await response.json()).token;
      tokens.push({ text: token, only: ['/v1/auth/adopt'] });
      secrets.push(token);
      await route.fulfill({ response });
    });
    await page2.keyboard.press('Enter');
    await page2.waitForURL((u) => u.origin === new URL(BASE).origin);
    check(token, 'no hand-over token');
    await page2.locator('#session').waitFor({ state: 'visible' });
    check((await page2.locator('#who').textContent()) === ADDRESS, 'the page shows another address');
    check((await page2.evaluate(() => location.hash)) === '', 'the fragment stays');
    const last = adopts()[adopts().length - 1];
    check(last.url === BASE + '/v1/auth/adopt' && JSON.parse(last.body).token === token, 'the token was not posted to the other page\'s node');
    const w = await page2.evaluate(async () => (await fetch('/v1/auth/whoami')).status);
    check(w === 200, `whoami on ${BASE} after the hand-over: ${w}`);
    b.page = one;
    // The first page shares that origin's cookie: logged in again.
    await page.reload();
    await page.locator('#session').waitFor({ state: 'visible' });
  });

  await checkWatched(page2, watch2, [BASE, OTHER].map((u) => new URL(u).origin));
  await finalChecks();
}

await run(main);
