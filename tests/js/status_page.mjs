// Drives tether's status page in a real headless Chromium (Debian's /usr/bin/chromium) through
// playwright-core, for tests/it/ops_status_page.rs.
//
//   node status_page.mjs '{"url":"http://127.0.0.1:PORT/","upstream":"app","drain":"b","token":null}'
//
// Prints one JSON event per line on stdout:
//   {"event":"rows", ...}      the backends the page shows (after entering the token, if any)
//   {"event":"drained", ...}   the drain button was clicked and the page shows the new state
// then waits for a line on stdin (the test has checked the admin API and undrained the
// backend behind the page's back), waits for the page to show it without being reloaded:
//   {"event":"refreshed", ...}
//   {"event":"done", "requests":[...], "errors":[...]}
// or {"event":"error","message":...} and exit code 1.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const STEP_MS = 15000;
const args = JSON.parse(process.argv[2]);
const emit = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + "\n");
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const profile = mkdtempSync(join(tmpdir(), "tether-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_MS);
  const requests = [];
  const errors = [];
  page.on("request", (r) => requests.push(r.method() + " " + r.url()));
  page.on("response", (r) => {
    if (r.status() === 401) requests.push("401 " + r.url());
  });
  page.on("pageerror", (e) => errors.push("pageerror: " + e.message));
  page.on("console", (m) => {
    // A 401 before the token is entered is expected and shows in the console as a failed
    // resource; everything else is a bug.
    if (m.type() === "error" && !m.text().includes("401")) errors.push("console: " + m.text());
  });

  await page.goto(args.url, { waitUntil: "load" });
  const title = await page.title();
  let promptedForToken = null;
  if (args.token) {
    await page.waitForFunction(() => document.getElementById("error").textContent.includes("token"));
    promptedForToken = await page.textContent("#error");
    await page.fill("#token", args.token);
    await page.press("#token", "Enter");
    await page.locator("#token").blur();
  }
  const table = `table[data-upstream="${args.upstream}"]`;
  const row = (id) => `${table} tr[data-backend="${id}"]`;
  await page.waitForSelector(row(args.drain));
  const stateOf = (id) => page.textContent(`${row(id)} .state-cell span`);
  const headers = await page.$$eval(`${table} th`, (ths) => ths.map((th) => th.textContent));
  const rows = await page.$$eval(`${table} tbody tr`, (trs) =>
    trs.map((tr) => ({ id: tr.dataset.backend, cells: [...tr.cells].map((td) => td.textContent) })),
  );
  emit("rows", { title, headers, rows, promptedForToken, summary: await page.textContent("#summary") });

  await page.click(`${row(args.drain)} button.drain`);
  await page.waitForFunction(
    (sel) => ["draining", "drained"].includes(document.querySelector(sel)?.textContent),
    `${row(args.drain)} .state-cell span`,
  );
  emit("drained", {
    state: await stateOf(args.drain),
    button: await page.textContent(`${row(args.drain)} button`),
    drainCell: await page.textContent(`${row(args.drain)} td:nth-child(9)`),
  });

  // The test undrains the backend through the API; the page must notice on its own.
  const next = await stdinLines.next();
  if (next.done) throw new Error("stdin closed before the test said to go on");
  const navigations = [];
  page.on("framenavigated", (f) => navigations.push(f.url()));
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === "active", `${row(args.drain)} .state-cell span`);
  emit("refreshed", { state: await stateOf(args.drain), navigations });
  emit("done", { requests, errors });
} catch (e) {
  emit("error", { message: String(e && e.stack ? e.stack : e) });
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
