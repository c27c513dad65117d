import { chromium } from 'playwright-core';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync'] });
const page = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
await page.goto(process.argv[2] + '/assets/posted_batches', { waitUntil: 'networkidle' });
await page.waitForTimeout(2500);
const skip = page.getByRole('button', { name: 'Skip' });
if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(500); }
await page.getByRole('button', { name: 'Plots' }).first().click();
await page.waitForTimeout(1000);
const parts = page.getByRole('button', { name: 'Partitions' });
if (await parts.count()) { await parts.first().click(); }
await page.waitForTimeout(8000);
await page.screenshot({ path: process.argv[3].replace('.png','_p.png') });
await page.getByRole('button', { name: 'Events' }).last().click();
await page.waitForTimeout(3000);
await page.getByText('Plots', { exact: true }).first().scrollIntoViewIfNeeded();
await page.screenshot({ path: process.argv[3] });
await browser.close();
