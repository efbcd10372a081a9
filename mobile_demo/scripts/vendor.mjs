// Copy the few runtime files the app needs from node_modules into app/vendor/ (committed), so
// `malm-edge demo` serves the app with no node on the user's machine.
//
//   npm ci && npm run vendor          refresh app/vendor/ from the pinned packages
//   npm ci && npm run check-vendor    exit 1 if app/vendor/ differs from the pinned packages
//
// Only the single-file WASM build of onnxruntime-web (CPU, SIMD, threads) and the main-thread
// build of sqlite-wasm are taken: no WebGPU/WebGL/JSEP variants, no OPFS worker.
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const vendor = join(root, "app", "vendor");
const packages = {
  "onnxruntime-web": {
    dest: "ort",
    files: ["dist/ort.wasm.min.mjs", "dist/ort-wasm-simd-threaded.mjs", "dist/ort-wasm-simd-threaded.wasm"],
  },
  "@sqlite.org/sqlite-wasm": {
    dest: "sqlite",
    files: ["sqlite-wasm/jswasm/sqlite3.mjs", "sqlite-wasm/jswasm/sqlite3.wasm"],
  },
};

function sha256(path) {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

function plan() {
  const entries = [];
  const record = {};
  for (const [name, { dest, files }] of Object.entries(packages)) {
    const pkgDir = join(root, "node_modules", ...name.split("/"));
    const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
    record[name] = { version: pkg.version, license: pkg.license, files: {} };
    for (const file of files) {
      const base = file.split("/").pop();
      const source = join(pkgDir, file);
      entries.push({ source, target: join(vendor, dest, base) });
      record[name].files[`${dest}/${base}`] = sha256(source);
    }
  }
  return { entries, record };
}

const { entries, record } = plan();
const recordText = JSON.stringify(record, null, 2) + "\n";
const recordPath = join(vendor, "VENDORED.json");
if (process.argv.includes("--check")) {
  const stale = entries.filter(({ source, target }) => !existsSync(target) || sha256(target) !== sha256(source));
  if (!existsSync(recordPath) || readFileSync(recordPath, "utf8") !== recordText) stale.push({ target: recordPath });
  for (const { target } of stale) console.error(`stale: ${target}`);
  if (stale.length) {
    console.error("app/vendor/ differs from package-lock.json: run `npm run vendor`");
    process.exit(1);
  }
  console.log(`app/vendor/ matches the pinned packages (${entries.length} files)`);
} else {
  for (const { source, target } of entries) {
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(source, target);
  }
  writeFileSync(recordPath, recordText);
  console.log(`copied ${entries.length} files into app/vendor/`);
}
