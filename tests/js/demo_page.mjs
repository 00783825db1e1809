// The demo chat page in headless Chromium (Debian's /usr/bin/chromium via playwright-core), as a
// new user tries it against `tether demo`: `/?user=alice` signs in as alice (the page gets a
// demo token from /login and the proxy verifies it); joining twice in a row is one
// subscription; messages with an empty, `null` or non-JSON body render without breaking the
// page; two visitors without ?user are served anonymously, with different random names.
//
//   node demo_page.mjs URL            (URL like http://127.0.0.1:PORT/, the demo's proxy)
//
// Prints {"event":"joined",...}, waits for a line on stdin (the test published the odd
// messages), drops the page's WebSocket as a network blip would and prints
// {"event":"dropped"}, waits for another line (the test published while the page was away),
// then prints {"event":"done", "rows": [...], "log": "...", "names": [...], "anonymous": [...],
// "errors": [...]} once the page shows a fifth message.
import { createInterface } from 'node:readline';
import { launch } from './chromium.mjs';

const [url] = process.argv.slice(2);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
let browser;
const errors = [];
try {
  browser = await launch();
  const { context, page } = browser;
  page.on('pageerror', (e) => errors.push('pageerror: ' + e.message));
  await page.goto(url + '?user=alice');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected'));
  const user = await page.inputValue('#user');
  // Join twice in a row, before the first RECEIPT can arrive.
  await page.evaluate(() => { document.getElementById('join').click(); document.getElementById('join').click(); });
  await page.waitForFunction(() => !document.getElementById('text').disabled);
  const log = await page.textContent('#log');
  emit({ event: 'joined', user, log });
  await stdinLines.next();
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 4);
  // A network blip: the page reconnects (after its back-off) and resumes the room.
  await page.evaluate(() => ws.close());
  emit({ event: 'dropped' });
  await stdinLines.next();
  await page.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 5);
  await page.waitForFunction(() => document.getElementById('text').disabled === false);
  const rows = await page.$$eval('#messages .msg', (els) => els.map((e) => e.textContent));
  const pageLog = await page.textContent('#log');
  const names = [];
  const anonymous = [];
  for (let i = 0; i < 2; i++) {
    const p = await context.newPage();
    p.on('pageerror', (e) => errors.push('pageerror: ' + e.message));
    await p.goto(url);
    names.push(await p.inputValue('#user'));
    await p.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected'));
    anonymous.push(await p.textContent('#log'));
    await p.close();
  }
  emit({ event: 'done', rows, log: pageLog, names, anonymous, errors });
} catch (e) {
  emit({ event: 'error', message: String(e && e.message), errors });
} finally {
  if (browser) await browser.close();
}
process.exit(0);
