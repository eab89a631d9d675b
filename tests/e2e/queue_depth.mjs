// Reads the queue table as the dashboard shows it (driven by tests/tests/queue_depth.rs, which
// compares it with Redis, the API, the CLI and /metrics at one moment).
//
//   node tests/e2e/queue_depth.mjs BASE_URL TOKEN
//
// Prints one JSON array: [{queue, ready, runnable, scheduled, inflight, blocked, dead}, …].

import { chromium } from 'playwright-core';

const [base, token] = process.argv.slice(2);
if (!base || !token) {
  console.error('usage: node queue_depth.mjs BASE_URL TOKEN');
  process.exit(2);
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true });
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  await page.goto(base);
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#queues tr[data-queue]');
  const rows = await page.evaluate(() => {
    const table = document.querySelector('#queues table');
    const headers = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim().toLowerCase());
    const at = (row, label) => row.children[headers.indexOf(label)].textContent.replace(/[^0-9]/g, '');
    return [...table.querySelectorAll('tbody tr[data-queue]')].map((row) => ({
      queue: row.dataset.queue,
      ready: Number(at(row, 'ready')),
      runnable: Number(at(row, 'runnable')),
      scheduled: Number(at(row, 'scheduled')),
      inflight: Number(at(row, 'in flight')),
      blocked: Number(at(row, 'blocked')),
      dead: Number(at(row, 'dead')),
    }));
  });
  console.log(JSON.stringify(rows));
} finally {
  await browser.close();
}
