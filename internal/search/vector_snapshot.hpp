#pragma once
// The files of a vector snapshot (search/vectors.cpp saves and loads the graphs):
//
//   <root>/CURRENT            the name of the newest complete snapshot
//   <root>/snap-<vseq>/       one snapshot: the graphs hold every vector up to vseq
//       manifest.json         what follows, with each file's size and XXH3 hash
//       <i>.hnsw              model i's graph (hnswlib's format)
//       <i>.ids, <i>.vseq     its label → unit and label → vseq tables
//
// Every file is fsynced before CURRENT moves to its snapshot (written aside, then
// renamed), so a crash mid-save leaves the previous snapshot in force; a file that
// does not match its manifest makes the snapshot unusable (a full rebuild follows).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/error.hpp"

namespace engram::search::snapshot {

struct file_check {
  std::string name;  // inside the snapshot's directory
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};

struct model_entry {
  std::string model;
  uint32_t dim = 0;
  size_t m = 0;                // the graph's parameters when it was built
  size_t ef_construction = 0;
  file_check graph, ids, vseqs;
};

struct manifest {
  uint64_t vseq = 0;   // every vector up to this one is in the graphs (or was removed)
  std::string store;   // storage::store::identity() of the store they came from
  std::vector<model_entry> models;
};

// The snapshot CURRENT names: its directory and manifest. nullopt: there is none.
model::result<std::optional<std::pair<std::string, manifest>>> read_current(const std::string& root);

// A new, empty directory for a snapshot at `vseq`.
model::result<std::string> begin(const std::string& root, uint64_t vseq);

// fsyncs a file written into a snapshot and measures it (size and hash, read back).
model::result<file_check> seal(const std::string& dir, const std::string& name);

// Writes `data` to dir/name, fsynced, and measures it (from `data`).
model::result<file_check> write_sealed(const std::string& dir, const std::string& name, std::string_view data);

// True when dir/f.name has f's size and hash.
bool verify(const std::string& dir, const file_check& f);

// Writes the manifest, fsyncs the directory, moves CURRENT to it and removes every
// other snapshot directory.
model::status commit(const std::string& root, const std::string& dir, const manifest& m);

// Removes CURRENT (durably): no snapshot is in force until the next commit.
void drop(const std::string& root);

}  // namespace engram::search::snapshot
