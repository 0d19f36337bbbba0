import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import { chromium, type Browser } from "playwright-core";
import { afterEach, describe, expect, it } from "vitest";
import { demoReceipt, scratchDir, serversMentioning, startDev, stopDev, stopStartedDevs } from "./support/dev.ts";

/** Debian's `chromium` (installed by .ci/run), or TALLY_CHROMIUM. */
function chromiumPath(): string {
  const candidates = [process.env.TALLY_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
  const found = candidates.find((c): c is string => c !== undefined && c !== "" && existsSync(c));
  if (!found) throw new Error("no Chromium: install Debian's chromium package (apt-get install chromium) or set TALLY_CHROMIUM");
  return found;
}

let browser: Browser | null = null;
afterEach(async () => {
  await browser?.close();
  browser = null;
  await stopStartedDevs();
});

describe("the live dashboard", () => {
  it("loads in headless Chromium, shows live numbers from the demo traffic, and a change made in the demo ERP appears on the page", async () => {
    const root = await scratchDir();
    const dir = path.join(root, ".tally");
    try {
      const dev = await startDev(dir, "--fresh", "--rate", "10", "--skus", "300");
      browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox", "--disable-dev-shm-usage"] });
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      const errors: Array<string> = [];
      page.on("pageerror", (e) => errors.push(e.message));

      // Without a token: the sign-in form, and no data.
      await page.goto(`${dev.apiUrl}/`);
      await page.locator("#login").waitFor({ state: "visible" });

      // With the dev token in the fragment (never sent to the server), pinning a demo SKU the simulator leaves alone.
      await page.goto(`${dev.apiUrl}/#token=${dev.token}&pin=SKU-0005`);
      await page.locator("#state", { hasText: "live" }).waitFor({ timeout: 30_000 });
      expect(new URL(page.url()).hash).not.toContain(dev.token);
      const cell = page.locator('td[data-sku="SKU-0005"][data-channel="web"]');
      await expect.poll(async () => Number((await cell.textContent())?.replace(/,/g, "")), { timeout: 60_000 }).toBeGreaterThan(0);

      // Live numbers: the simulator's flows (POS over HTTP, the shop and the ERP through CDC) and the busiest SKUs.
      await expect.poll(async () => page.locator("#flows tbody tr[data-source='pos']").count(), { timeout: 60_000 }).toBe(1);
      await expect.poll(async () => page.locator("#availability tbody tr").count(), { timeout: 30_000 }).toBeGreaterThan(5);
      expect(await page.locator("#dlq").textContent()).toMatch(/^\d[\d,]*$/);
      await expect.poll(async () => page.locator("#cdc tbody tr").count()).toBe(2);
      // The catalog version each channel runs: nothing acknowledged in the demo, so the web shop shows behind.
      const webCatalog = page.locator("#catalog-versions tbody tr[data-channel='web'] td[data-field='behind']");
      await expect.poll(async () => Number((await webCatalog.textContent())?.replace(/,/g, "")), { timeout: 60_000 }).toBeGreaterThan(0);

      // A goods receipt in the demo ERP: 7 more of SKU-0005 at DC1 show up in the web column.
      const before = Number((await cell.textContent())!.replace(/,/g, ""));
      await demoReceipt(dev, "100005", 7, "EA");
      await expect.poll(async () => Number((await cell.textContent())?.replace(/,/g, "")), { timeout: 30_000 }).toBe(before + 7);
      await page.screenshot({ path: path.join(root, "dashboard.png") });
      expect(errors).toEqual([]);

      await browser.close();
      browser = null;
      expect(await stopDev(dev)).toBe(0);
      expect(serversMentioning(root)).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 180_000);
});
