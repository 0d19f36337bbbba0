/**
 * Which catalog version each channel runs. A channel acknowledges the version it has applied (over
 * HTTP or NATS); acknowledgements never move a channel back. A channel is behind while a version that
 * changed its catalog lies above its acknowledged one, and has been since the oldest such version was
 * recorded: that is what `GET /v1/catalog/versions`, the dashboard and `tally_catalog_version_lag` show.
 */
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { Sql } from "postgres";
import type { Topology } from "../src/wire/index.ts";

/** An acknowledgement refused: `field` names what is wrong (`version`, `channel`). */
export class InvalidCatalogAck extends Error {
  override readonly name = "InvalidCatalogAck";
  constructor(
    readonly field: string,
    readonly detail: string,
  ) {
    super(`${field}: ${detail}`);
  }
}

/** A channel's acknowledged version as stored (ackedVersion may be above the one just sent: acks never go back). */
export interface CatalogAck {
  readonly channel: string;
  readonly ackedVersion: number;
  readonly ackedAt: string;
  readonly headVersion: number;
}

const MAX_VERSION = 999_999_999_999_999;

/**
 * Records that `channel` runs catalog version `version` (an integer from 0 to the current head).
 * Throws InvalidCatalogAck naming `version` otherwise. A lower or equal version than the one stored
 * changes nothing (a late or repeated acknowledgement).
 */
export async function recordCatalogAck(
  sql: Sql,
  ack: { readonly channel: string; readonly version: unknown; readonly by: string },
): Promise<CatalogAck> {
  const { version } = ack;
  if (typeof version !== "number" || !Number.isInteger(version) || version < 0 || version > MAX_VERSION)
    throw new InvalidCatalogAck("version", `expected a non-negative integer catalog version, got ${JSON.stringify(version) ?? "nothing"}`);
  return sql.begin(async (tx) => {
    const [head] = await tx<[{ version: string }]>`select version::text from catalog_head`;
    const headVersion = Number(head.version);
    if (version > headVersion) throw new InvalidCatalogAck("version", `${version} is above the current catalog version ${headVersion}`);
    await tx`
      insert into catalog_acks (channel, acked_version, acked_by) values (${ack.channel}, ${version}, ${ack.by})
      on conflict (channel) do update set acked_version = excluded.acked_version, acked_at = now(), acked_by = excluded.acked_by
       where catalog_acks.acked_version < excluded.acked_version`;
    const [row] = await tx<[{ acked_version: string; acked_at: Date }]>`
      select acked_version::text, acked_at from catalog_acks where channel = ${ack.channel}`;
    return { channel: ack.channel, ackedVersion: Number(row.acked_version), ackedAt: row.acked_at.toISOString(), headVersion };
  });
}

/** One channel's catalog version and how far behind it is. */
export interface ChannelCatalogVersion {
  readonly channel: string;
  /** The highest version the channel acknowledged (0: none yet). */
  readonly ackedVersion: number;
  readonly ackedAt: string | null;
  /** The last version that changed this channel's catalog (0: none). */
  readonly latestVersion: number;
  /** Versions that changed this channel's catalog above its acknowledged one. */
  readonly behindBy: number;
  /** When the oldest of those was recorded (null: not behind). */
  readonly behindSince: string | null;
  /** Seconds since behindSince (0: not behind). */
  readonly lagSeconds: number;
  /** The channel's `catalogLagToleranceSeconds`. */
  readonly toleranceSeconds: number;
}

export interface CatalogVersions {
  readonly headVersion: number;
  readonly at: string;
  readonly channels: ReadonlyArray<ChannelCatalogVersion>;
}

/**
 * The head version and, per channel (the configured ones, those some price list prices, and those that
 * acknowledged), its acknowledged version and lag. One snapshot, so the figures agree with each other.
 */
export async function catalogVersions(sql: Sql, tolerances: Readonly<Record<string, number>>, defaultTolerance = 300): Promise<CatalogVersions> {
  return sql.begin("isolation level repeatable read read only", async (tx) => {
    const [head] = await tx<[{ version: string; now: Date }]>`select version::text, now() as now from catalog_head`;
    const rows = await tx<
      Array<{
        channel: string;
        acked_version: string | null;
        acked_at: Date | null;
        latest: string | null;
        behind_by: number;
        behind_since: Date | null;
      }>
    >`
      with channels as (
        select unnest(${tx.array(Object.keys(tolerances))}::text[]) as channel
        union select channel from catalog_price_lists
        union select channel from catalog_acks)
      select c.channel, a.acked_version::text, a.acked_at,
             (select max(version)::text from catalog_channel_versions v where v.channel = c.channel) as latest,
             (select count(*)::int from catalog_channel_versions v
               where v.channel = c.channel and v.version > coalesce(a.acked_version, 0)) as behind_by,
             (select min(cv.created_at) from catalog_channel_versions v join catalog_versions cv using (version)
               where v.channel = c.channel and v.version > coalesce(a.acked_version, 0)) as behind_since
        from channels c left join catalog_acks a using (channel)
       order by c.channel`;
    const now = head.now.getTime();
    return {
      headVersion: Number(head.version),
      at: head.now.toISOString(),
      channels: rows.map((r) => ({
        channel: r.channel,
        ackedVersion: Number(r.acked_version ?? 0),
        ackedAt: r.acked_at?.toISOString() ?? null,
        latestVersion: Number(r.latest ?? 0),
        behindBy: r.behind_by,
        behindSince: r.behind_since?.toISOString() ?? null,
        lagSeconds: r.behind_since ? Math.max(0, (now - r.behind_since.getTime()) / 1000) : 0,
        toleranceSeconds: tolerances[r.channel] ?? defaultTolerance,
      })),
    };
  });
}

/**
 * Channels may acknowledge over NATS: a request on `tally.<env>.catalog-ack.<channel>` with
 * `{"version": N}` is answered with what `POST /v1/channels/:channel/catalog-ack` answers (or
 * `{error, field, message}`). API processes share the subject through a queue group.
 */
export class CatalogAckSubscriber {
  #sub: Subscription | null = null;
  #loop: Promise<void> | null = null;

  constructor(readonly deps: { nc: NatsConnection; sql: Sql; topology: Topology; channels: ReadonlySet<string>; log: Logger }) {}

  start(): void {
    const sub = this.deps.nc.subscribe(this.deps.topology.catalogAckSubject(), { queue: this.deps.topology.catalogAckQueue });
    this.#sub = sub;
    this.#loop = (async () => {
      for await (const msg of sub) await this.#handle(msg);
    })();
  }

  async stop(): Promise<void> {
    if (!this.#sub) return;
    await this.#sub.drain().catch(() => {}); // connection already closed: nothing left to drain
    await this.#loop;
    this.#sub = null;
  }

  async #handle(msg: Msg): Promise<void> {
    let reply: unknown;
    try {
      const channel = this.deps.topology.channelOfCatalogAckSubject(msg.subject);
      if (channel === null || !this.deps.channels.has(channel))
        throw new InvalidCatalogAck("channel", `no channel ${JSON.stringify(channel ?? msg.subject)} is configured`);
      let body: unknown;
      try {
        body = JSON.parse(msg.string());
      } catch {
        throw new InvalidCatalogAck("version", 'expected a JSON object {"version": <catalog version>}');
      }
      const version = body !== null && typeof body === "object" ? (body as { version?: unknown }).version : undefined;
      const { headVersion: _, ...ack } = await recordCatalogAck(this.deps.sql, { channel, version, by: `nats:${msg.subject}` });
      reply = ack;
    } catch (error) {
      if (error instanceof InvalidCatalogAck) reply = { error: "invalid_request", field: error.field, message: error.message };
      else {
        this.deps.log.error({ err: error, subject: msg.subject }, "catalog acknowledgement failed; the channel should send it again");
        reply = { error: "unavailable", message: "a dependency failed; send the acknowledgement again" };
      }
    }
    if (msg.reply) msg.respond(JSON.stringify(reply));
  }
}
