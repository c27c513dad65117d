import { chromium } from 'playwright-core';
const base = process.argv[2];
const out = process.argv[3];
const pages = JSON.parse(process.argv[4]);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync'] });
const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
for (const [name, path, wait, click] of pages) {
  await page.goto(base + path, { waitUntil: 'networkidle', timeout: 60000 });
  await page.waitForTimeout(2500);
  const skip = page.getByRole('button', { name: 'Skip' });
  if (await skip.count()) { await skip.first().click(); await page.waitForTimeout(500); }
  if (click && click.startsWith('scroll:')) { await page.getByText(click.slice(7), { exact: true }).first().scrollIntoViewIfNeeded(); }
  else if (click) { await page.getByText(click).first().click(); await page.waitForTimeout(1500); await page.evaluate(() => document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })); }
  await page.waitForTimeout(wait || 3000);
  await page.screenshot({ path: `${out}/${name}.png` });
  console.log('shot', name);
}
await browser.close();
