// Drives the system Chromium (playwright-core, no browser download) through GET /dashboard for
// tests/e2e/test_dashboard.py. Usage: node dashboard.mjs <base url> <screenshot.png>
// It prints one JSON line per step on stdout:
//   {"step": "loaded", "values": {...}}   the page is live and shows the pipeline's numbers
//   {"step": "changed", "values": {...}}  the log head moved past what "loaded" showed and an
//                                          OrderPlaced row is listed; the screenshot is written
// and exits 0, or prints {"step": "failed", "error": "..."} (screenshot written when it can)
// and exits 1. CHROMIUM overrides the browser's path (default /usr/bin/chromium).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 30000);
const IDS = ["commands-per-second", "log-head", "relay-position", "applied-position",
  "lag-events", "lag-seconds", "held-streams", "parked-events", "open-streams"];

function say(line) { process.stdout.write(`${JSON.stringify(line)}\n`); }

async function values(page) {
  return page.evaluate((ids) => {
    const found = {};
    for (const id of ids) found[id] = document.getElementById(id).dataset.value ?? "";
    found.status = document.getElementById("status").dataset.state;
    found.events = [...document.querySelectorAll("#events tr td:nth-child(2)")].map((c) => c.textContent);
    return found;
  }, IDS);
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
  await page.waitForFunction(
    (head) => Number(document.getElementById("log-head").dataset.value) > head
      && [...document.querySelectorAll("#events tr td:nth-child(2)")]
        .some((cell) => cell.textContent === "OrderPlaced")
      && Number(document.getElementById("lag-events").dataset.value) === 0,
    Number(loaded["log-head"]), { timeout: TIMEOUT_MS });
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error(`errors on the page: ${errors.join("; ")}`);
  say({ step: "changed", values: await values(page) });
} catch (error) {
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  say({ step: "failed", error: String(error) });
  process.exitCode = 1;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
