/**
 * The shipped Prometheus files: the alerting rules are valid and pass their unit tests
 * (deploy/prometheus/alerts.test.yml), the example configuration is valid, and the Grafana dashboard
 * parses. That the metrics they use are exported is checked against real scrapes in test/metrics.test.ts.
 */
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./support/tally.ts";

const DIR = path.join(ROOT, "deploy/prometheus");

function promtool(...args: Array<string>): { status: number | null; output: string } {
  const r = spawnSync("promtool", args, { cwd: DIR, encoding: "utf8" });
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("the shipped Prometheus rules and Grafana dashboard", () => {
  it("alerts.yml is valid (promtool check rules)", () => {
    const r = promtool("check", "rules", "alerts.yml");
    expect(r.output).toContain("SUCCESS");
    expect(r.status, r.output).toBe(0);
  });

  it("every alert fires on the series that should raise it and stays silent on healthy ones (promtool test rules)", async () => {
    const r = promtool("test", "rules", "alerts.test.yml");
    expect(r.status, r.output).toBe(0);
    // Every alert of alerts.yml has a test.
    const alerts = [...(await readFile(path.join(DIR, "alerts.yml"), "utf8")).matchAll(/^\s+- alert: (\S+)$/gm)].map((m) => m[1]!);
    const tests = await readFile(path.join(DIR, "alerts.test.yml"), "utf8");
    expect(alerts.length).toBeGreaterThanOrEqual(8);
    for (const a of alerts) expect(tests, a).toMatch(new RegExp(`alertname: ${a}\\n\\s+exp_alerts:\\n\\s+- exp_labels`));
  });

  it("the example prometheus.yml is valid, with the alerts (promtool check config)", () => {
    const r = promtool("check", "config", "prometheus.yml");
    expect(r.output).toContain("1 rule files found");
    expect(r.status, r.output).toBe(0);
  });

  it("the Grafana dashboard parses, every panel with at least one query", async () => {
    const dash = JSON.parse(await readFile(path.join(ROOT, "deploy/grafana/tally.json"), "utf8")) as {
      title: string;
      panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }>;
    };
    expect(dash.title).toBe("Tally");
    const graphs = dash.panels.filter((p) => p.type !== "row");
    expect(graphs.length).toBeGreaterThan(10);
    for (const p of graphs) expect(p.targets?.length, p.title).toBeGreaterThan(0);
  });
});
