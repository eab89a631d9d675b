// End-to-end check of the operator dashboard in headless Chromium (driven by
// tests/tests/dashboard.rs, which starts the producer and a worker and creates the tokens).
//
//   node tests/e2e/dashboard.mjs BASE_URL OPERATOR_TOKEN SCREENSHOT_PATH [VIEWER_TOKEN]
//
// As the operator: sign in, trigger `demo_diamond` for `acme` with the form, wait until the page
// shows the run `completed` with a metrics row per step, check the queue table lists `demo` and
// that the active run (another, slow run the test started) offers Cancel; save a screenshot.
// Then pause the `demo` queue. As the viewer: the same page shows no trigger, cancel, resume or
// pause button. As the operator again: cancel the slow run and resume the queue with their
// buttons. Chromium is CHROMIUM or /usr/bin/chromium.
// Exits non-zero with the reason on the first failed check.

import { chromium } from 'playwright-core';

const [base, operatorToken, screenshot, viewerToken] = process.argv.slice(2);
if (!base || !operatorToken || !screenshot) {
  console.error('usage: node dashboard.mjs BASE_URL OPERATOR_TOKEN SCREENSHOT_PATH [VIEWER_TOKEN]');
  process.exit(2);
}

const RUN_LIMIT_MS = 60_000;
const DIAMOND_STEPS = ['start', 'left', 'right', 'join', 'report'];
const ACTION_BUTTONS = ['trigger', 'cancel', 'resume', 'pause', 'unpause'].map((a) => `[data-action="${a}"]`).join(', ');

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Fails with the banner's text when the page shows an API error. */
async function noBanner(page, when) {
  const banner = page.locator('#banner');
  if (await banner.isVisible()) throw new Error(`${when}: the page shows an error: ${await banner.innerText()}`);
}

async function signIn(page, token, role) {
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector(`#whoami .r-${role}`);
  // The first poll has rendered when the queue table is there.
  await page.waitForSelector('#queues table');
}

async function signOut(page) {
  await page.click('#logout');
  await page.waitForSelector('#login-form');
  const stored = await page.evaluate(() => sessionStorage.length);
  check(stored === 0, 'logging out leaves the token in sessionStorage');
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const problems = [];
try {
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => problems.push(`script error: ${e.message}`));
  page.on('dialog', (d) => d.accept());
  page.on('response', (r) => {
    if (!r.url().includes('/api/') && r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`);
  });

  await page.goto(base.replace(/\/$/, '') + '/');
  await page.waitForSelector('#login-form');

  // Operator: trigger a run with the form and watch it complete.
  await signIn(page, operatorToken, 'operator');
  await page.waitForSelector('#trigger-chain option[value="demo_diamond"]', { state: 'attached' });
  await page.selectOption('#trigger-chain', 'demo_diamond');
  await page.selectOption('#trigger-integration', 'acme');
  await page.selectOption('#trigger-mode', 'full');
  await page.click('[data-action="trigger"]');
  await page.waitForFunction(() => document.querySelector('#run-detail')?.dataset.runId);
  const runId = await page.getAttribute('#run-detail', 'data-run-id');
  await page.waitForSelector(`#run-detail[data-run-id="${runId}"][data-status="completed"]`, { timeout: RUN_LIMIT_MS });
  await page.waitForSelector(`#history tr[data-run-id="${runId}"] .badge.s-completed`);
  for (const step of DIAMOND_STEPS) {
    await page.waitForSelector(`#run-detail tr[data-step="${step}"]`);
    await page.waitForSelector(`#run-detail .step[data-step="${step}"][data-status="succeeded"]`);
  }
  await page.waitForSelector('#queues tr[data-queue="demo"]');
  if (viewerToken) {
    // The slow run the test started is active: the operator may cancel it.
    await page.waitForSelector('#active .run [data-action="cancel"]');
  }
  await noBanner(page, 'after the run completed');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`run ${runId} completed; screenshot at ${screenshot}`);

  if (viewerToken) {
    const demo = '#queues tr[data-queue="demo"]';
    await page.click(`${demo} [data-action="pause"]`);
    await page.waitForSelector(`${demo} .badge.s-paused`);

    // Viewer: reads everything, is offered no action.
    await signOut(page);
    await signIn(page, viewerToken, 'viewer');
    await page.waitForSelector('#active .run');
    await page.waitForSelector(`${demo} .badge.s-paused`);
    await page.waitForSelector(`#history tr[data-run-id="${runId}"]`);
    check(await page.locator('#trigger-panel').isHidden(), 'a viewer sees the trigger form');
    const offered = await page.locator(ACTION_BUTTONS).count();
    check(offered === 0, `a viewer is offered ${offered} action button(s)`);
    await noBanner(page, 'as a viewer');
    console.log('viewer sees no action buttons');

    // Operator again: cancel the slow run, resume the queue.
    await signOut(page);
    await signIn(page, operatorToken, 'operator');
    const slow = page.locator('#active .run').first();
    await slow.waitFor();
    const slowId = await slow.getAttribute('data-run-id');
    await slow.locator('[data-action="cancel"]').click();
    await page.waitForSelector(`#history tr[data-run-id="${slowId}"] .badge.s-cancelled`);
    await page.click(`${demo} [data-action="unpause"]`);
    await page.waitForSelector(`${demo} .badge.s-active`);
    await noBanner(page, 'after cancelling and resuming');
    console.log(`run ${slowId} cancelled; queue demo paused and resumed`);
  }
  check(problems.length === 0, `the page had problems:\n${problems.join('\n')}`);
} catch (e) {
  // Keep what the page showed and what it logged next to the failure.
  const failure = screenshot.replace(/(\.png)?$/, '-failure.png');
  await page.screenshot({ path: failure, fullPage: true }).catch(() => {});
  const banner = await page.locator('#banner').innerText().catch(() => '');
  console.error([e.stack || String(e), banner && `banner: ${banner}`, ...problems, `page at failure: ${failure}`].filter(Boolean).join('\n'));
  process.exitCode = 1;
} finally {
  await browser.close();
}
