import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkSource, replicationRoleSql } from "../cdc/admin.ts";
import { findSource } from "../cdc/index.ts";
import { migrate } from "../ledger/index.ts";
import { startTally } from "../src/app/roles.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { createLogger } from "../src/platform/log.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, runTally, tallyEnv } from "./support/tally.ts";

let ctx: TestContext;
let demo: DemoSources;
let ledger: Sql;
let role: string;

const asRole = (url: string) => {
  const u = new URL(url);
  u.username = role;
  return u.toString();
};

beforeAll(async () => {
  ctx = await testContext();
  ledger = connectPostgres(ctx.databaseUrl, { max: 2 });
  await migrate(ledger, ctx.env);
  // The DBA's part, as a superuser: schemas, publications and slots (tally source enable).
  demo = await demoSources(ctx);
  role = `tally_cdc_${ctx.env}`;
  // And the role, from the SQL Tally prints for it; CREATE ROLE once (roles are per server).
  const erp = findSource(demo.config, "erp", ctx.env);
  const shop = findSource(demo.config, "shop", ctx.env);
  const [create, ...erpGrants] = replicationRoleSql(erp, role);
  await demo.erp.unsafe(create!);
  for (const g of erpGrants) await demo.erp.unsafe(g);
  for (const g of replicationRoleSql(shop, role).slice(1)) await demo.shop.unsafe(g);
}, 120_000);

afterAll(async () => {
  await demo?.close();
  await ledger?.end({ timeout: 5 });
});

describe("CDC as a least-privilege replication role (REPLICATION + SELECT on the captured tables)", () => {
  it("`tally source enable --print-sql --role` prints that role's SQL: REPLICATION and SELECT on exactly the captured tables", async () => {
    const printed = await runTally(["source", "enable", "erp", "--print-sql", "--role", "tally_cdc"], { ...tallyEnv(ctx), ...demo.env });
    expect(printed.code).toBe(0);
    expect(printed.stdout).toContain("CREATE ROLE tally_cdc WITH LOGIN REPLICATION;");
    const erp = findSource(demo.config, "erp", ctx.env);
    for (const table of Object.keys(erp.tables))
      expect(printed.stdout).toMatch(new RegExp(`GRANT SELECT ON [^;]*${table.split(".")[1]}[^;]*TO tally_cdc;`));
    expect(printed.stdout).not.toMatch(/GRANT (INSERT|UPDATE|DELETE|ALL)/);
  });

  it("passes every check of `tally source check` as that role, is not a superuser and cannot write the source", async () => {
    const sql = connectPostgres(asRole(demo.env.TALLY_SOURCE_ERP_URL!), { max: 1 });
    try {
      const results = await checkSource(sql, findSource(demo.config, "erp", ctx.env));
      expect(results.filter((r) => !r.ok)).toEqual([]);
      const [me] = await sql<
        Array<{ rolsuper: boolean; rolreplication: boolean }>
      >`select rolsuper, rolreplication from pg_roles where rolname = current_user`;
      expect(me).toEqual({ rolsuper: false, rolreplication: true });
      await expect(sql.unsafe("insert into goods_receipts (item_no, location, qty, uom) values ('100001', 'DC1', 1, 'EA')")).rejects.toMatchObject({
        code: "42501",
      });
      // A table only the snapshot reads is checked too (the snapshot failed on it, while every check passed).
      const snapshotOnly = findSource(demo.config, "erp", ctx.env)
        .snapshot.map((t) => t.table)
        .find((t) => !Object.hasOwn(findSource(demo.config, "erp", ctx.env).tables, t))!;
      await demo.erp.unsafe(`revoke select on ${snapshotOnly} from ${role}`);
      const without = await checkSource(sql, findSource(demo.config, "erp", ctx.env));
      expect(without.filter((r) => !r.ok)).toMatchObject([{ check: `snapshot ${snapshotOnly}`, fix: `GRANT SELECT ON ${snapshotOnly} TO ${role};` }]);
      await demo.erp.unsafe(`grant select on ${snapshotOnly} to ${role}`);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("the cdc role runs as it: snapshot, then streamed changes reach the ledger", async () => {
    const urls = { TALLY_SOURCE_ERP_URL: asRole(demo.env.TALLY_SOURCE_ERP_URL!), TALLY_SOURCE_SHOP_URL: asRole(demo.env.TALLY_SOURCE_SHOP_URL!) };
    Object.assign(process.env, urls);
    const tally = await startTally(
      loadSettings({ ...tallyEnv(ctx), ...urls }),
      demo.config,
      ["cdc", "worker"],
      createLogger("test-cdc-role", process.env.TALLY_LOG_LEVEL ?? "warn"),
    );
    try {
      const onHand = async () => {
        const [row] = await ledger<
          Array<{ qty: number }>
        >`select qty from balances where sku = 'SKU-0005' and location = 'DC1' and bucket = 'on_hand'`;
        return row?.qty;
      };
      await eventually("the snapshot as the replication role", async () => (await onHand()) !== undefined);
      const before = (await onHand())!;
      // A goods receipt written by the ERP (the superuser here) streams through the role's slot.
      await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100005', 'DC1', 3, 'EA')`;
      await eventually("the streamed receipt", async () => (await onHand()) === before + 3);
      const [slot] = await demo.erp<Array<{ active: boolean; usename: string }>>`
        select s.active, a.usename from pg_replication_slots s join pg_stat_activity a on a.pid = s.active_pid where s.slot_name = ${findSource(demo.config, "erp", ctx.env).slot}`;
      expect(slot).toEqual({ active: true, usename: role });
    } finally {
      await tally.close();
    }
  }, 120_000);
});
