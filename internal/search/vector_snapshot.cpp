#include "search/vector_snapshot.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

namespace engram::search::snapshot {
namespace {

namespace fs = std::filesystem;
using model::errc;
using model::fail;
using json = nlohmann::json;

constexpr int format = 2;  // 2: with the label → vseq table
constexpr std::string_view prefix = "snap-";

model::error os_error(const std::string& what, const std::string& path, int err = errno) {
  return {errc::unavailable, what + " " + path + ": " + std::strerror(err)};
}

model::status fsync_path(const std::string& path, bool directory = false) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) return std::unexpected(os_error("cannot open", path));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return std::unexpected(os_error("cannot fsync", path, err));
  return {};
}

// Size and XXH3 of a file, read in 1 MiB blocks.
model::result<std::pair<uint64_t, uint64_t>> measure(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::unexpected(os_error("cannot read", path));
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), &XXH3_freeState);
  XXH3_64bits_reset(state.get());
  std::vector<char> block(1 << 20);
  uint64_t bytes = 0;
  while (in) {
    in.read(block.data(), std::streamsize(block.size()));
    const auto got = size_t(in.gcount());
    XXH3_64bits_update(state.get(), block.data(), got);
    bytes += got;
  }
  if (in.bad()) return std::unexpected(os_error("cannot read", path));
  return std::pair{bytes, uint64_t(XXH3_64bits_digest(state.get()))};
}

json to_json(const file_check& f) { return {{"name", f.name}, {"bytes", f.bytes}, {"xxh3", f.xxh3}}; }

file_check file_from_json(const json& j) {
  return {j.at("name").get<std::string>(), j.at("bytes").get<uint64_t>(), j.at("xxh3").get<uint64_t>()};
}

}  // namespace

model::result<std::optional<std::pair<std::string, manifest>>> read_current(const std::string& root) {
  using found = std::optional<std::pair<std::string, manifest>>;
  std::ifstream current(root + "/CURRENT");
  if (!current) return found{};
  std::string name;
  std::getline(current, name);
  if (!name.starts_with(prefix) || name.find('/') != std::string::npos)
    return fail(errc::internal, "vector snapshot: CURRENT names '" + name + "'");
  const std::string dir = root + "/" + name;
  std::ifstream in(dir + "/manifest.json");
  if (!in) return std::unexpected(os_error("cannot read", dir + "/manifest.json"));
  try {
    const auto j = json::parse(in);
    if (j.at("format").get<int>() != format)
      return fail(errc::internal, "vector snapshot " + dir + " has format " + j.at("format").dump());
    manifest m;
    m.vseq = j.at("vseq").get<uint64_t>();
    m.store = j.at("store").get<std::string>();
    for (const auto& e : j.at("models"))
      m.models.push_back({e.at("model").get<std::string>(), e.at("dim").get<uint32_t>(), e.at("m").get<size_t>(),
                          e.at("ef_construction").get<size_t>(), file_from_json(e.at("graph")),
                          file_from_json(e.at("ids")), file_from_json(e.at("vseqs"))});
    return found{std::pair{dir, std::move(m)}};
  } catch (const json::exception& e) {
    return fail(errc::internal, "vector snapshot " + dir + ": manifest.json: " + e.what());
  }
}

model::result<std::string> begin(const std::string& root, uint64_t vseq) {
  const std::string dir = root + "/" + std::string(prefix) + std::to_string(vseq);
  std::error_code ec;
  fs::remove_all(dir, ec);  // a save of the same vseq that did not finish
  if (ec) return fail(errc::unavailable, "cannot remove " + dir + ": " + ec.message());
  fs::create_directories(dir, ec);
  if (ec) return fail(errc::unavailable, "cannot create " + dir + ": " + ec.message());
  return dir;
}

model::result<file_check> seal(const std::string& dir, const std::string& name) {
  const std::string path = dir + "/" + name;
  if (auto ok = fsync_path(path); !ok) return std::unexpected(ok.error());
  auto measured = measure(path);
  if (!measured) return std::unexpected(measured.error());
  return file_check{name, measured->first, measured->second};
}

model::result<file_check> write_sealed(const std::string& dir, const std::string& name, std::string_view data) {
  const std::string path = dir + "/" + name;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(data.data(), std::streamsize(data.size()));
    out.close();
    if (!out) return std::unexpected(os_error("cannot write", path));
  }
  // The bytes are at hand: hashed here, not read back.
  if (auto ok = fsync_path(path); !ok) return std::unexpected(ok.error());
  return file_check{name, data.size(), uint64_t(XXH3_64bits(data.data(), data.size()))};
}

bool verify(const std::string& dir, const file_check& f) {
  if (f.name.empty() || f.name.find('/') != std::string::npos) return false;
  auto measured = measure(dir + "/" + f.name);
  return measured && measured->first == f.bytes && measured->second == f.xxh3;
}

model::status commit(const std::string& root, const std::string& dir, const manifest& m) {
  json models = json::array();
  for (const auto& e : m.models)
    models.push_back({{"model", e.model}, {"dim", e.dim}, {"m", e.m}, {"ef_construction", e.ef_construction},
                      {"graph", to_json(e.graph)}, {"ids", to_json(e.ids)}, {"vseqs", to_json(e.vseqs)}});
  const json j{{"format", format}, {"vseq", m.vseq}, {"store", m.store}, {"models", std::move(models)}};
  if (auto ok = write_sealed(dir, "manifest.json", j.dump(2)); !ok) return std::unexpected(ok.error());
  if (auto ok = fsync_path(dir, true); !ok) return ok;
  const std::string name = fs::path(dir).filename().string();
  if (auto ok = write_sealed(root, "CURRENT.tmp", name + "\n"); !ok) return std::unexpected(ok.error());
  std::error_code ec;
  fs::rename(root + "/CURRENT.tmp", root + "/CURRENT", ec);
  if (ec) return fail(errc::unavailable, "cannot replace " + root + "/CURRENT: " + ec.message());
  if (auto ok = fsync_path(root, true); !ok) return ok;
  std::vector<fs::path> older;
  for (const auto& entry : fs::directory_iterator(root, ec))
    if (std::error_code kind; entry.is_directory(kind) && entry.path().filename().string().starts_with(prefix) &&
                              entry.path().filename() != name)
      older.push_back(entry.path());
  for (const auto& path : older) fs::remove_all(path, ec);
  return {};
}

void drop(const std::string& root) {
  std::error_code ec;
  if (fs::remove(root + "/CURRENT", ec)) (void)fsync_path(root, true);
}

}  // namespace engram::search::snapshot
