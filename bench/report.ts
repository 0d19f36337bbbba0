/** The bench's HTML report: tables and inline SVG charts, one self-contained file (no network). */
import type { CatalogLatency } from "./catalogLatency.ts";
import type { ProfileSummary } from "./profile.ts";

type Json = Record<string, unknown>;

const esc = (s: unknown) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
const COLORS = ["#38bdf8", "#22c55e", "#f59e0b", "#ef4444", "#a78bfa"];

function lineChart(
  title: string,
  xs: ReadonlyArray<number>,
  series: ReadonlyArray<{ name: string; ys: ReadonlyArray<number> }>,
  unit: string,
): string {
  const W = 640;
  const H = 240;
  const pad = { l: 64, r: 16, t: 46, b: 32 };
  const maxY = Math.max(1, ...series.flatMap((s) => s.ys)) * 1.1;
  const maxX = Math.max(1, ...xs);
  const x = (v: number) => pad.l + (v / maxX) * (W - pad.l - pad.r);
  const y = (v: number) => H - pad.b - (v / maxY) * (H - pad.t - pad.b);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * maxY);
  const grid = ticks
    .map(
      (v) =>
        `<line x1="${pad.l}" x2="${W - pad.r}" y1="${y(v)}" y2="${y(v)}" stroke="#1e2a44"/><text x="${pad.l - 6}" y="${y(v) + 4}" text-anchor="end">${Math.round(v).toLocaleString("en")}</text>`,
    )
    .join("");
  const lines = series
    .map(
      (s, i) =>
        `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${s.ys.map((v, k) => `${x(xs[k]!).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"/>`,
    )
    .join("");
  const legend = series.map((s, i) => `<tspan fill="${COLORS[i % COLORS.length]}">■ ${esc(s.name)}</tspan>`).join("  ");
  // Title on the first line; the y unit and the legend on the second, so a long title never runs into the legend.
  return `<svg viewBox="0 0 ${W} ${H}" class="chart"><text x="8" y="16" class="title">${esc(title)}</text><text x="8" y="34">${esc(unit)}</text><text x="${W - pad.r}" y="34" text-anchor="end">${legend}</text>${grid}
    <text x="${(W + pad.l) / 2}" y="${H - 6}" text-anchor="middle">seconds into the load</text>${lines}</svg>`;
}

function barChart(
  title: string,
  groups: ReadonlyArray<{ label: string; bars: ReadonlyArray<{ name: string; value: number }> }>,
  unit: string,
  limit?: number,
): string {
  const W = 640;
  const rowH = 22;
  const bars = groups.flatMap((g) => g.bars);
  const top = limit !== undefined ? 40 : 30; // room under the title for the target's label
  const H = top + 10 + groups.length * (bars.length / Math.max(1, groups.length)) * rowH + groups.length * 10;
  const pad = { l: 200, r: 90 };
  const max = Math.max(1, limit ?? 0, ...bars.map((b) => b.value));
  let yPos = top;
  const body = groups
    .map((g) => {
      const out = g.bars
        .map((b, i) => {
          const w = (b.value / max) * (W - pad.l - pad.r);
          const row = `<text x="${pad.l - 8}" y="${yPos + 14}" text-anchor="end">${i === 0 ? `${esc(g.label)} ` : ""}${esc(b.name)}</text>
            <rect x="${pad.l}" y="${yPos + 3}" width="${Math.max(1, w).toFixed(1)}" height="${rowH - 6}" fill="${COLORS[i % COLORS.length]}"/>
            <text x="${pad.l + w + 6}" y="${yPos + 14}">${b.value.toLocaleString("en")} ${esc(unit)}</text>`;
          yPos += rowH;
          return row;
        })
        .join("");
      yPos += 10;
      return out;
    })
    .join("");
  const limitLine =
    limit !== undefined
      ? `<line x1="${pad.l + (limit / max) * (W - pad.l - pad.r)}" x2="${pad.l + (limit / max) * (W - pad.l - pad.r)}" y1="${top - 4}" y2="${H}" stroke="#ef4444" stroke-dasharray="4 3"/><text x="${pad.l + (limit / max) * (W - pad.l - pad.r)}" y="${top - 8}" text-anchor="middle" fill="#ef4444">target ${limit.toLocaleString("en")}</text>`
      : "";
  return `<svg viewBox="0 0 ${W} ${H}" class="chart"><text x="8" y="16" class="title">${esc(title)}</text>${body}${limitLine}</svg>`;
}

function table(rows: ReadonlyArray<ReadonlyArray<unknown>>): string {
  const [head, ...body] = rows;
  return `<table><thead><tr>${head!.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>${body.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

const STYLE = `<style>
body{margin:0;padding:24px;background:#0f172a;color:#e2e8f0;font:14px/1.45 system-ui,sans-serif;max-width:1360px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;color:#94a3b8;text-transform:uppercase;letter-spacing:1px;margin:28px 0 8px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}.card{background:#111c33;border:1px solid #1e2a44;border-radius:8px;padding:12px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{padding:4px 8px;border-bottom:1px solid #1e2a44;text-align:left}th{color:#94a3b8;font-weight:500}
svg.chart{width:100%;height:auto;font-size:11px;fill:#cbd5e1}svg .title{font-size:13px;fill:#e2e8f0;font-weight:600}
.pass{color:#22c55e;font-weight:700}.fail{color:#ef4444;font-weight:700}.muted{color:#94a3b8}
</style>`;

type Throughput = {
  offeredCommandsPerSec: number;
  sustainedCommandsPerSec: number;
  drainSeconds: number;
  timeline: Array<{ t: number; offered: number; applied: number }>;
};
type Latency = Record<string, { samples: number; p50: number | null; p95: number | null; p99: number | null }>;

export function renderReport(r: Json): string {
  const limits = r.limits as Record<string, number>;
  const c = r.correctness as Record<string, unknown>;
  const targets = r.targets as Record<string, { target: number; measured: number | null; at: string; met: boolean }>;
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tally bench — ${esc(r.scenario)} ${esc(r.at)}</title>
${STYLE}</head><body>
<h1>Tally bench — ${esc(r.scenario)}</h1>
<div class="muted">${esc(r.at)} · ${esc(r.rate)} events/s offered for ${esc(r.durationS)} s · ${Number(r.skus).toLocaleString("en")} SKUs · ${esc(r.stores)} stores · ${esc(r.partitions)} partitions · ${esc(r.cores)} cores, everything on the same machine</div>
<h2>Headline</h2>
<div class="grid">
<div class="card">${table(headlineRows(r))}</div>
<div class="card">${table([["target (this 2-core machine)", "measured", "at", ""], ...Object.entries(targets).map(([k, v]) => [k, v.measured, v.at, v.met ? "met" : "not met (or not at the target load)"])])}
<p class="muted">${esc(r.bottleneck)}</p></div>
</div>
<h2>Charts</h2>
<div class="grid">
${chartCards(r)}
</div>
${baselineSection(r.pollingBaseline as Baseline | undefined)}
${profileSection(r.profile as ProfileSummary | undefined)}
<h2>Limits measured in this run</h2><div class="card">${table([["limit", "per second"], ...Object.entries(limits).map(([k, v]) => [k, v.toLocaleString("en")])])}</div>
<h2>Commands by source</h2><div class="card">${table([["source", "status", "commands"], ...((c.bySource as Array<{ source: string; status: string; n: number }>) ?? []).map((b) => [b.source, b.status, b.n])])}</div>
</body></html>`;
}

type Pct = { p50: number | null; p99: number | null };

/** Where source → availability goes: before / after the ledger transaction that wrote the change, the relay's rounds, CDC's stages. */
function stageRows(r: Json): Array<Array<unknown>> {
  const stages = (r.latencyStagesMs ?? {}) as Record<
    string,
    { toApplyStart: Pct; applyToPublished: Pct; tail: { samples: number; toApplyStart: number; applyToPublished: number } }
  >;
  const relay = r.relayRoundMs as { rounds: number; pickup: Pct; read: Pct; publish: Pct; delete: Pct } | undefined;
  const cdc = (r.cdcStagesMs ?? {}) as Record<string, { commitToReceived: Pct; commitToPublished: Pct }>;
  const f = (p: Pct) => `${p.p50} / ${p.p99}`;
  return [
    ...Object.entries(stages).map(([s, l]) => [
      `  ${s}: source → apply start · apply → published`,
      `p50 ${l.toApplyStart.p50} · ${l.applyToPublished.p50}, p99 ${l.toApplyStart.p99} · ${l.applyToPublished.p99} ms`,
      `the p99 tail (${l.tail.samples}): ${l.tail.toApplyStart} · ${l.tail.applyToPublished} ms mean`,
    ]),
    ...(relay && relay.rounds > 0
      ? [
          [
            "relay rounds p50 / p99",
            `pickup ${f(relay.pickup)} · read ${f(relay.read)} · publish ${f(relay.publish)} · delete ${f(relay.delete)} ms`,
            `${relay.rounds} rounds`,
          ],
        ]
      : []),
    ...Object.entries(cdc).map(([s, c]) => [
      `  ${s} CDC: source commit → taken in · → JetStream acked`,
      `p50 ${c.commitToReceived.p50} · ${c.commitToPublished.p50}, p99 ${c.commitToReceived.p99} · ${c.commitToPublished.p99} ms`,
      "",
    ]),
  ];
}

/** The headline table: throughput, latency per source, reservations, main thread, CPU, memory, worker batches, correctness. */
function headlineRows(r: Json): Array<Array<unknown>> {
  const limits = r.limits as Record<string, number>;
  const tp = r.throughput as Throughput;
  const lat = r.latencyMs as Latency;
  const res = r.reservations as { count: number; p50: number | null; p99: number | null; outcomes: Record<string, number> };
  const cpu = r.cpu as Record<string, unknown>;
  const c = r.correctness as Record<string, unknown>;
  const pass = c.allAccountedFor === true && c.duplicateLegs === 0 && c.verify === "ok";
  return [
    ["measure", "value", "ratio"],
    [
      "Tally sustained end to end",
      `${tp.sustainedCommandsPerSec.toLocaleString("en")} commands/s`,
      `${(tp.sustainedCommandsPerSec / limits.publishCommandsPerSec!).toFixed(3)} of JetStream publish`,
    ],
    ["offered load", `${tp.offeredCommandsPerSec.toLocaleString("en")} commands/s`, ""],
    ["drain after the load", `${tp.drainSeconds} s`, ""],
    ...Object.entries(lat).map(([s, l]) => [
      `source → availability published (${s})`,
      `p50 ${l.p50} · p95 ${l.p95} · p99 ${l.p99} ms`,
      `${l.samples} samples`,
    ]),
    ...stageRows(r),
    ...Object.entries((r.catalogLatencyMs ?? {}) as CatalogLatency).map(([c, l]) => [
      `ERP price change → catalog published (${c})`,
      `p50 ${l.p50} · p99 ${l.p99} ms`,
      `${l.samples} samples${l.unseen > 0 ? `, ${l.unseen} unseen` : ""}`,
    ]),
    ["reservation round trip", `p50 ${res.p50} · p99 ${res.p99} ms`, `${res.count} requests ${JSON.stringify(res.outcomes)}`],
    ...(r.mainThread
      ? [
          [
            "node main thread",
            `on a CPU ${pct((r.mainThread as { onCpu: number }).onCpu)} · waiting for one ${pct((r.mainThread as { waitingForCpu: number }).waitingForCpu)} of the load`,
            `${(r.mainThread as { timeslicesPerSec: number }).timeslicesPerSec} timeslices/s (run queue, /proc schedstat)`,
          ],
        ]
      : []),
    [
      "CPU",
      `node ${cpu.node} · postgres: ledger ${cpu.postgres}, sources ${cpu.sourcePostgres ?? "–"} · nats-server ${cpu.natsServer}${Number(cpu.workerProcesses) > 0 ? ` · worker processes ${cpu.workerProcesses}` : ""}`,
      String(cpu.unit),
    ],
    [
      "node RSS, middle → end",
      `${(r.memory as { nodeRssMidMiB: number }).nodeRssMidMiB} → ${(r.memory as { nodeRssEndMiB: number }).nodeRssEndMiB} MiB`,
      `live actors capped at ${(r.memory as { maxActors: number }).maxActors}`,
    ],
    [
      "worker batches",
      `${(r.worker as { batches: number }).batches} · mean ${(r.worker as { meanBatch: number }).meanBatch} commands in ${(r.worker as { meanApplyMs: number }).meanApplyMs} ms`,
      (r.worker as { applyPermits?: number }).applyPermits !== undefined
        ? `${(r.worker as { applyPermits: number }).applyPermits} apply permits, busy ${(r.worker as { busyFractionOfPermits: number }).busyFractionOfPermits}`
        : `busy ${(r.worker as { busyFractionPerPartition: number }).busyFractionPerPartition} per partition`,
    ],
    [
      "correctness",
      `${c.appliedOrRejected}/${c.expectedTotal} commands decided · ${c.duplicateLegs} duplicate legs · verify ${c.verify} · ${c.deadLetters} dead letters`,
      pass ? "PASS" : "FAIL",
    ],
  ];
}

/** The four charts (throughput over time, latency per source, Tally vs the limits, memory), one card each. */
function chartCards(r: Json): string {
  const limits = r.limits as Record<string, number>;
  const tp = r.throughput as Throughput;
  const lat = r.latencyMs as Latency;
  const rss = (r.rss as Array<{ t: number; node: number; pg: number; nats: number }>) ?? [];
  const mib = (b: number) => Math.round(b / 1048576);
  const throughput = lineChart(
    "Throughput over time",
    tp.timeline.map((p) => p.t),
    [
      { name: "offered", ys: tp.timeline.map((p) => p.offered) },
      { name: "applied", ys: tp.timeline.map((p) => p.applied) },
    ],
    "commands per second",
  );
  const latency = barChart(
    "Source → availability published",
    Object.entries(lat).map(([s, l]) => ({
      label: s,
      bars: [
        { name: "p50", value: l.p50 ?? 0 },
        { name: "p95", value: l.p95 ?? 0 },
        { name: "p99", value: l.p99 ?? 0 },
      ],
    })),
    "ms",
    100,
  );
  const catalog = barChart(
    "ERP price change → catalog published, per channel",
    Object.entries((r.catalogLatencyMs ?? {}) as CatalogLatency).map(([c, l]) => ({
      label: c,
      bars: [
        { name: "p50", value: l.p50 ?? 0 },
        { name: "p99", value: l.p99 ?? 0 },
      ],
    })),
    "ms",
    100,
  );
  const versusLimits = barChart(
    "Tally vs this machine's limits",
    [
      {
        label: "",
        bars: [
          { name: "Tally end to end", value: tp.sustainedCommandsPerSec },
          { name: "ledger inserts (rows)", value: limits.insertRowsPerSec! },
          { name: "JetStream publish", value: limits.publishCommandsPerSec! },
          { name: "JetStream consume", value: limits.consumeCommandsPerSec! },
          { name: "logical decoding", value: limits.decodeChangesPerSec! },
        ],
      },
    ],
    "/s",
    25_000,
  );
  const memory = lineChart(
    "Resident memory (Postgres ledger server: PSS over its processes)",
    rss.map((p) => p.t),
    [
      { name: "node", ys: rss.map((p) => mib(p.node)) },
      { name: "postgres", ys: rss.map((p) => mib(p.pg)) },
      { name: "nats-server", ys: rss.map((p) => mib(p.nats)) },
    ],
    "MiB",
  );
  return [throughput, latency, ...(r.catalogLatencyMs ? [catalog] : []), versusLimits, memory]
    .map((chart) => `<div class="card">${chart}</div>`)
    .join("\n");
}

type Baseline = Array<{ name: string; orders: number; accepted: number; oversoldUnits: number; oversoldPer10k: number }>;

/** The polling-sync baseline (flash-sale, steady): oversold units per channel, Tally's view against polling ones. */
function baselineSection(baseline: Baseline | undefined): string {
  if (!baseline) return "";
  return `<h2>Polling-sync baseline</h2><div class="card">${table([["channel", "orders", "accepted", "oversold units", "oversold per 10,000 orders"], ...baseline.map((b) => [b.name, b.orders, b.accepted, b.oversoldUnits, b.oversoldPer10k])])}
<p class="muted">The bench's web orders replayed against a channel that sees other channels' stock changes only as of its last poll (every 60 s, every 900 s) versus Tally's view (changes published a measured p99 after they happen; Tally's own reservations are decided by the SKU's actor, so the real pipeline cannot oversell them at all).</p></div>`;
}

/** Where the Node process's CPU went during the load, by stage and by function. */
function profileSection(p: ProfileSummary | undefined): string {
  if (!p) return "";
  return `<h2>CPU profile of the Node process during the load</h2>
<div class="grid">
<div class="card">${barChart("Busy samples by stage", [{ label: "", bars: p.stages.slice(0, 8).map((s) => ({ name: s.stage.replace(/ \(.*\)$/, ""), value: Math.round(s.share * 1000) / 10 })) }], "%")}
<p class="muted">${p.samples.toLocaleString("en")} samples (1 ms); idle ${pct(p.idle)}. Each sample counts for the stage of the nearest frame that belongs to one. V8 samples wall time: a thread that waits for a CPU is counted in the function it was in — mostly a socket write, which wakes its peer (see the main thread's run-queue share above).</p></div>
<div class="card">${table([["function (self time)", "share of busy samples"], ...p.hottest.map((h) => [h.fn, pct(h.share)])])}</div>
</div>`;
}
