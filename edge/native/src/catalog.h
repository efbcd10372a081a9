// The SQLite recipe catalog (edge/catalog.py), read-only: row i describes table row i; word search
// through the FTS5 index with every word quoted (user text never reaches FTS5 syntax).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct sqlite3;

namespace malm {

struct Recipe {
  int64_t row = 0;
  std::string id, title, ingredients_json, instructions_json;
  float score = 0;
};

// edge/catalog.py fts_query: every word (\w+) quoted, all required; "" when there is no word.
// Words: ASCII letters, digits, '_' and non-ASCII letters (Unicode punctuation and symbols in the
// Latin-1, General Punctuation and CJK/fullwidth punctuation blocks are separators).
std::string fts_query(const std::string& text);

class Catalog {
 public:
  Catalog(const std::string& path, int64_t expected_count);
  ~Catalog();
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  int64_t count() const { return count_; }
  std::vector<Recipe> lookup(const std::vector<int64_t>& rows) const;
  std::vector<Recipe> text_search(const std::string& text, int limit) const;

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
  int64_t count_ = 0;
};

}  // namespace malm
