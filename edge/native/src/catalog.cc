#include "catalog.h"

#include <sqlite3.h>

#include <memory>

#include "common.h"

namespace malm {
namespace {

using Statement = std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)>;

std::string column_text(sqlite3_stmt* stmt, int i) {
  const unsigned char* text = sqlite3_column_text(stmt, i);
  return text ? reinterpret_cast<const char*>(text) : "";
}

// Next code point of UTF-8 `s` at `i` (advancing i); invalid bytes come back as U+FFFD.
uint32_t next_code_point(const std::string& s, size_t& i) {
  unsigned char c = s[i++];
  if (c < 0x80) return c;
  int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : -1;
  if (extra < 0) return 0xFFFD;
  uint32_t cp = c & (0x3F >> extra);
  for (int n = 0; n < extra; ++n) {
    if (i >= s.size() || (static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return 0xFFFD;
    cp = (cp << 6) | (static_cast<unsigned char>(s[i++]) & 0x3F);
  }
  return cp;
}

bool is_word(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  if (cp == 0xFFFD) return false;
  if (cp < 0xC0) return cp == 0xAA || cp == 0xB2 || cp == 0xB3 || cp == 0xB5 || cp == 0xB9 || cp == 0xBA ||
                        (cp >= 0xBC && cp <= 0xBE);
  if (cp == 0xD7 || cp == 0xF7) return false;
  if (cp >= 0x2000 && cp <= 0x206F) return false;  // General Punctuation
  if (cp >= 0x3000 && cp <= 0x303F) return cp >= 0x3005 && cp <= 0x3007;  // CJK punctuation
  if (cp >= 0xFF00 && cp <= 0xFF0F) return false;
  return true;
}

}  // namespace

std::string fts_query(const std::string& text) {
  std::string out, word;
  auto flush = [&]() {
    if (word.empty()) return;
    if (!out.empty()) out += ' ';
    out += '"' + word + '"';  // a word never holds '"', so no escaping is needed
    word.clear();
  };
  for (size_t i = 0; i < text.size();) {
    size_t start = i;
    uint32_t cp = next_code_point(text, i);
    if (is_word(cp)) word.append(text, start, i - start);
    else flush();
  }
  flush();
  return out;
}

Catalog::Catalog(const std::string& path, int64_t expected_count) : path_(path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail(MALM_ERR_CATALOG, path + ": cannot open the catalog (" + why + ")");
  }
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db_, "SELECT count(*) FROM recipes", -1, &raw, nullptr);
  Statement stmt(raw, sqlite3_finalize);
  if (rc != SQLITE_OK || sqlite3_step(raw) != SQLITE_ROW) {
    std::string why = sqlite3_errmsg(db_);
    stmt.reset();
    sqlite3_close(db_);
    db_ = nullptr;
    fail(MALM_ERR_CATALOG, path + ": not a malm-edge catalog (" + why + ")");
  }
  count_ = sqlite3_column_int64(raw, 0);
  stmt.reset();
  if (expected_count >= 0 && count_ != expected_count) {
    sqlite3_close(db_);
    db_ = nullptr;
    fail(MALM_ERR_CATALOG, path + ": holds " + std::to_string(count_) + " recipes, expected " +
                               std::to_string(expected_count));
  }
}

Catalog::~Catalog() { sqlite3_close(db_); }

std::vector<Recipe> Catalog::lookup(const std::vector<int64_t>& rows) const {
  sqlite3_stmt* raw = nullptr;
  const char* sql = "SELECT row, id, title, ingredients, instructions FROM recipes WHERE row = ?";
  if (sqlite3_prepare_v2(db_, sql, -1, &raw, nullptr) != SQLITE_OK) {
    sqlite3_finalize(raw);
    fail(MALM_ERR_CATALOG, path_ + ": not a malm-edge catalog (" + sqlite3_errmsg(db_) + ")");
  }
  Statement stmt(raw, sqlite3_finalize);
  std::vector<Recipe> out;
  for (int64_t row : rows) {
    sqlite3_reset(raw);
    sqlite3_bind_int64(raw, 1, row);
    int rc = sqlite3_step(raw);
    if (rc != SQLITE_ROW) {
      if (rc == SQLITE_DONE) fail(MALM_ERR_CATALOG, path_ + ": no recipe at rows [" + std::to_string(row) + "]");
      fail(MALM_ERR_CATALOG, path_ + ": " + sqlite3_errmsg(db_));
    }
    out.push_back({sqlite3_column_int64(raw, 0), column_text(raw, 1), column_text(raw, 2),
                   column_text(raw, 3), column_text(raw, 4), 0.0f});
  }
  return out;
}

std::vector<Recipe> Catalog::text_search(const std::string& text, int limit) const {
  std::string match = fts_query(text);
  std::vector<Recipe> out;
  if (match.empty() || limit <= 0) return out;
  const char* sql =
      "SELECT r.row, r.id, r.title, r.ingredients, r.instructions FROM recipes_fts f "
      "JOIN recipes r ON r.row = f.rowid WHERE recipes_fts MATCH ? "
      "ORDER BY bm25(recipes_fts), r.row LIMIT ?";
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &raw, nullptr) != SQLITE_OK) {
    sqlite3_finalize(raw);
    fail(MALM_ERR_CATALOG, path_ + ": no FTS5 index (" + sqlite3_errmsg(db_) + ")");
  }
  Statement stmt(raw, sqlite3_finalize);
  sqlite3_bind_text(raw, 1, match.c_str(), int(match.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(raw, 2, limit);
  int rc;
  while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
    out.push_back({sqlite3_column_int64(raw, 0), column_text(raw, 1), column_text(raw, 2),
                   column_text(raw, 3), column_text(raw, 4), 0.0f});
  }
  if (rc != SQLITE_DONE) fail(MALM_ERR_CATALOG, path_ + ": " + sqlite3_errmsg(db_));
  return out;
}

}  // namespace malm
