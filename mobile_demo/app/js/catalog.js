// The bundle's SQLite catalog (edge/catalog.py) through sqlite-wasm, opened in memory from the
// downloaded bytes (sqlite3_deserialize, read-only). FTS5 word search with edge's query escaping.
import sqlite3InitModule from "../vendor/sqlite/sqlite3.mjs";

const WORD = /[\p{L}\p{N}_]+/gu; // Python's re `\w+` (Unicode letters, digits, underscore)

/**
 * A safe FTS5 MATCH expression: every word of `text` quoted, all required (edge fts_query).
 * @returns {string|null} null when the text holds no word characters.
 */
export function ftsQuery(text) {
  const words = text.match(WORD);
  if (!words) return null;
  return words.map((word) => `"${word.replaceAll('"', '""')}"`).join(" ");
}

export class Catalog {
  /** @param {object} sqlite3 the initialised module. @param {Uint8Array} bytes catalog.sqlite. */
  constructor(sqlite3, bytes, expectedCount) {
    const { capi, wasm, oo1 } = sqlite3;
    this.db = new oo1.DB(":memory:", "r");
    const pointer = wasm.allocFromTypedArray(bytes);
    const flags = capi.SQLITE_DESERIALIZE_FREEONCLOSE | capi.SQLITE_DESERIALIZE_READONLY;
    const rc = capi.sqlite3_deserialize(this.db.pointer, "main", pointer, bytes.byteLength, bytes.byteLength, flags);
    this.db.checkRc(rc);
    try {
      this.count = this.db.selectValue("SELECT count(*) FROM recipes");
    } catch (err) {
      throw new Error(`catalog.sqlite: not a malm-edge catalog (${err.message})`);
    }
    if (expectedCount !== undefined && this.count !== expectedCount) {
      throw new Error(`catalog.sqlite: holds ${this.count} recipes, expected ${expectedCount}`);
    }
  }

  /** SQLite version string and whether FTS5 is compiled in. */
  info() {
    const version = this.db.selectValue("SELECT sqlite_version()");
    const fts5 = this.db.selectValue("SELECT sqlite_compileoption_used('ENABLE_FTS5')") === 1;
    return { version, fts5 };
  }

  /** Recipes at the given table rows, in the order asked. */
  lookup(rows) {
    if (!rows.length) return [];
    const marks = rows.map(() => "?").join(",");
    const found = new Map();
    const sql = `SELECT row, id, title, ingredients, instructions, image FROM recipes WHERE row IN (${marks})`;
    for (const r of this.db.selectObjects(sql, rows)) {
      found.set(r.row, { ...r, ingredients: JSON.parse(r.ingredients), instructions: JSON.parse(r.instructions) });
    }
    const missing = rows.filter((r) => !found.has(r));
    if (missing.length) throw new Error(`catalog.sqlite: no recipe at rows ${missing.slice(0, 5)}`);
    return rows.map((r) => found.get(r));
  }

  /** Recipes whose title or ingredients hold every word of `text`, bm25 order, ties by row. */
  textSearch(text, limit = 10) {
    const match = ftsQuery(text);
    if (match === null || limit <= 0) return [];
    return this.db.selectObjects(
      "SELECT r.row AS row, r.id AS id, r.title AS title FROM recipes_fts f JOIN recipes r ON r.row = f.rowid " +
        "WHERE recipes_fts MATCH ? ORDER BY bm25(recipes_fts), r.row LIMIT ?",
      [match, limit],
    );
  }
}

/** Initialise sqlite-wasm (quietly) and open the catalog bytes. */
export async function openCatalog(bytes, expectedCount) {
  // OPFS persistence is not used (the catalog lives in memory): drop sqlite's note about it.
  const quietOpfs = (log) => (...args) => String(args[0]).includes("OPFS") || log(...args);
  globalThis.sqlite3ApiConfig = { warn: quietOpfs(console.warn.bind(console)) };
  const sqlite3 = await sqlite3InitModule({ print: () => {}, printErr: quietOpfs(console.warn.bind(console)) });
  return new Catalog(sqlite3, bytes, expectedCount);
}
