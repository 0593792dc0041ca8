// Drives the system Chromium (playwright-core, no browser download) through GET /dashboard for
// tests/e2e/test_dashboard.py. Usage: node dashboard.mjs <base url> <screenshot.png>
// It prints one JSON line per step on stdout:
//   {"step": "loaded", "values": {...}}   the page is live and shows the pipeline's numbers
//   {"step": "changed", "values": {...}}  the log head moved MIN_NEW_EVENTS (default 1) past what
//                                          "loaded" showed, an OrderPlaced row is listed and the
//                                          relay and the read model have caught up with the head
//                                          (values read at that moment); the screenshot is written
// and exits 0, or prints {"step": "failed", "error": "..."} (screenshot written when it can)
// and exits 1. CHROMIUM overrides the browser's path (default /usr/bin/chromium).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 30000);
const MIN_NEW_EVENTS = Number(process.env.MIN_NEW_EVENTS || 1);  // past what "loaded" showed
const IDS = ["commands-per-second", "log-head", "relay-position", "applied-position",
  "lag-events", "lag-seconds", "held-streams", "parked-events", "open-streams"];

function say(line) { process.stdout.write(`${JSON.stringify(line)}\n`); }

// What the page shows, read in the page (a self-contained function: playwright sends it there):
// the ids' values, the status, the events listed. With `atLeast`, only once the log head has
// reached it, an OrderPlaced row is listed and the relay and the read model are at the head
// (false until then).
function shown({ ids, atLeast }) {
  const found = {};
  for (const id of ids) found[id] = document.getElementById(id).dataset.value ?? "";
  found.status = document.getElementById("status").dataset.state;
  found.events = [...document.querySelectorAll("#events tr td:nth-child(2)")].map((c) => c.textContent);
  if (atLeast === null) return found;
  return Number(found["log-head"]) >= atLeast
    && found.events.includes("OrderPlaced")
    && found["lag-events"] === "0"
    && found["applied-position"] === found["log-head"]
    && found["relay-position"] === found["log-head"]
    && found;
}

async function values(page) {
  return page.evaluate(shown, { ids: IDS, atLeast: null });
}

// a fresh profile every run (playwright-core wants it as the persistent context's directory)
const profile = mkdtempSync(join(tmpdir(), "shop-dashboard-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1200, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
let page;
try {
  page = browser.pages()[0] ?? await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`${base}/dashboard`, { waitUntil: "load", timeout: TIMEOUT_MS });
  await page.waitForFunction(
    () => document.getElementById("status").dataset.state === "live"
      && /^[0-9]+$/.test(document.getElementById("log-head").dataset.value ?? ""),
    null, { timeout: TIMEOUT_MS });
  const loaded = await values(page);
  say({ step: "loaded", values: loaded });
  // Caught up, read in the same evaluation that saw it: the page keeps changing meanwhile.
  const caughtUp = await page.waitForFunction(
    shown, { ids: IDS, atLeast: Number(loaded["log-head"]) + MIN_NEW_EVENTS },
    { timeout: TIMEOUT_MS });
  const changed = await caughtUp.jsonValue();
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error(`errors on the page: ${errors.join("; ")}`);
  say({ step: "changed", values: changed });
} catch (error) {
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  say({ step: "failed", error: String(error) });
  process.exitCode = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
