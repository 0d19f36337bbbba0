// The floor plan, checked: folders form layers and imports only point down (docs/architecture.md).
// `npm run check:deps` fails on an upward import, a cycle, or an import that bypasses a folder's index.ts.
/** Bottom to top. A folder may import its own files and any folder on a lower floor, never one above. */
const FLOORS = [
  ["src/contract"],
  ["src/platform"],
  ["src/wire"],
  ["ledger"],
  ["actors"],
  ["cdc"],
  ["src/ingest"],
  ["src/reservations", "src/channels"],
  ["src/operations"],
  ["src/http"],
  ["src/app"],
  ["bench"],
];
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
const folderRe = (folders) => `^(${folders.map(esc).join("|")})/`;

const upward = FLOORS.flatMap((floor, i) => {
  const above = FLOORS.slice(i + 1).flat();
  const sameFloorOthers = floor.length > 1 ? floor : [];
  const rules = [];
  if (above.length > 0) {
    rules.push({
      name: `no-upward-from-${floor.join("+").replace(/\//g, "-")}`,
      comment: `${floor.join(", ")} may not import a folder on a higher floor (${above.join(", ")})`,
      severity: "error",
      from: { path: folderRe(floor), pathNot: "\\.test\\.ts$" },
      to: { path: folderRe(above) },
    });
  }
  for (const f of sameFloorOthers) {
    rules.push({
      name: `no-sideways-from-${f.replace(/\//g, "-")}`,
      comment: `${f} and the other folders on its floor do not import each other`,
      severity: "error",
      from: { path: folderRe([f]), pathNot: "\\.test\\.ts$" },
      to: { path: folderRe(sameFloorOthers.filter((o) => o !== f)) },
    });
  }
  return rules;
});

module.exports = {
  forbidden: [
    ...upward,
    {
      name: "no-circular",
      comment: "no import cycles, between folders or files",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    {
      name: "through-index",
      comment: "another folder's files are private: import its public surface, its index.ts (tests may reach inside)",
      severity: "error",
      from: { path: "^(src/[^/]+|actors|ledger|cdc|bench)/", pathNot: "(\\.test\\.ts$|^test/)" },
      to: {
        path: "^(src/[^/]+|actors|ledger|cdc)/",
        pathNot: ["/index\\.ts$", "$1/"],
      },
    },
    {
      name: "no-bench-in-product",
      comment: "the shipped code never imports the benchmark",
      severity: "error",
      from: { path: "^(src|actors|ledger|cdc)/" },
      to: { path: "^bench/" },
    },
    {
      name: "no-test-in-product",
      severity: "error",
      from: { path: "^(src|actors|ledger|cdc|bench)/", pathNot: "\\.test\\.ts$" },
      to: { path: "^test/" },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "(^node_modules|\\.d\\.ts$)" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default"] },
  },
};
