// Configuration: defaults, the example file, precedence and validation.
#include <gtest/gtest.h>

#include <fstream>

#include "config/config.hpp"
#include "support/test_support.hpp"

namespace engram::config {
namespace {

TEST(Config, ExampleFileLoadsAndMatchesDefaults) {
  auto cfg = load({.file = std::string(ENGRAM_SOURCE_DIR) + "/config.example.yaml"});
  ASSERT_TRUE(cfg) << cfg.error().message;
  const config defaults;
  // The example documents the defaults, so loading it changes nothing but the
  // listen address (which the example spells out) and data_dir.
  EXPECT_EQ(cfg->server.port, 8080);
  EXPECT_EQ(cfg->server.host, "127.0.0.1");
  EXPECT_EQ(cfg->server.max_body_bytes, defaults.server.max_body_bytes);
  EXPECT_EQ(cfg->server.idle_timeout, defaults.server.idle_timeout);
  EXPECT_EQ(cfg->server.cors_origins, defaults.server.cors_origins);
  EXPECT_EQ(cfg->storage.mode, storage::durability::sync);
  EXPECT_EQ(cfg->storage.data_dir, "./data");
  EXPECT_EQ(cfg->storage.block_cache_bytes, defaults.storage.block_cache_bytes);
  EXPECT_EQ(cfg->storage.idempotency_ttl, defaults.storage.idempotency_ttl);
  EXPECT_EQ(cfg->engine.max_batch_units, defaults.engine.max_batch_units);
  EXPECT_EQ(cfg->search.yield_backlog, defaults.search.yield_backlog);
  EXPECT_EQ(cfg->search.yield_percent, defaults.search.yield_percent);
  EXPECT_EQ(cfg->log.level, "info");
  EXPECT_EQ(cfg->shutdown_timeout, defaults.shutdown_timeout);
}

class ConfigFile : public ::testing::Test {
 protected:
  std::string write(const std::string& yaml) {
    const auto path = dir_.str() + "/c.yaml";
    std::ofstream(path) << yaml;
    return path;
  }
  test::temp_dir dir_;
};

TEST_F(ConfigFile, PrecedenceIsFileThenEnvThenFlags) {
  const auto file = write("server:\n  addr: 0.0.0.0:1111\n  threads: 3\nstorage:\n  durability: relaxed\nlog:\n  level: debug\n");
  sources src{.file = file,
              .env = {{"ENGRAM_SERVER_ADDR", "127.0.0.1:2222"}, {"ENGRAM_LOG_LEVEL", "warn"}},
              .flags = {{"server.addr", "127.0.0.1:3333"}}};
  auto cfg = load(src);
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->server.port, 3333);                          // flag beats env and file
  EXPECT_EQ(cfg->log.level, "warn");                          // env beats file
  EXPECT_EQ(cfg->server.threads, 3u);                         // file beats default
  EXPECT_EQ(cfg->storage.mode, storage::durability::relaxed);
}

TEST_F(ConfigFile, EnvNamesTheConfigFile) {
  const auto file = write("server:\n  threads: 7\n");
  auto cfg = load({.env = {{"ENGRAM_CONFIG", file}}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->server.threads, 7u);
}

TEST_F(ConfigFile, InvalidValuesNameTheKey) {
  struct bad_case {
    std::string yaml;
    std::string key;
  } cases[] = {
      {"server:\n  addr: nope\n", "server.addr"},
      {"server:\n  threads: -1\n", "server.threads"},
      {"server:\n  max_body_bytes: lots\n", "server.max_body_bytes"},
      {"storage:\n  durability: maybe\n", "storage.durability"},
      {"log:\n  level: loud\n", "log.level"},
      {"search:\n  yield_percent: 0\n", "search.yield_percent"},
      {"server:\n  tpyo: 1\n", "server.tpyo"},
      {"server: [1, 2\n", "c.yaml"},  // YAML syntax error names the file
  };
  for (const auto& c : cases) {
    auto cfg = load({.file = write(c.yaml)});
    ASSERT_FALSE(cfg) << c.yaml;
    EXPECT_NE(cfg.error().message.find(c.key), std::string::npos) << cfg.error().message;
  }
  auto env_bad = load({.env = {{"ENGRAM_STORAGE_BLOCK_CACHE_MB", "0"}}});
  ASSERT_FALSE(env_bad);
  EXPECT_NE(env_bad.error().message.find("ENGRAM_STORAGE_BLOCK_CACHE_MB"), std::string::npos);
  EXPECT_FALSE(load({.file = dir_.str() + "/missing.yaml"}));
}

TEST_F(ConfigFile, ListsFromYamlAndEnv) {
  auto cfg = load({.file = write("server:\n  cors_origins: [\"https://a.example\", \"https://b.example\"]\n")});
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->server.cors_origins, (std::vector<std::string>{"https://a.example", "https://b.example"}));
  auto env = load({.env = {{"ENGRAM_SERVER_CORS_ORIGINS", "https://x, https://y"}}});
  EXPECT_EQ(env->server.cors_origins, (std::vector<std::string>{"https://x", "https://y"}));
}

TEST(CommandLine, FlagsMapToKeys) {
  const char* argv[] = {"engram", "--addr", "127.0.0.1:9", "--data-dir", "/tmp/d", "--log-level", "error",
                        "--durability", "relaxed", "--set", "server.threads=5"};
  auto cl = parse_command_line(11, argv);
  ASSERT_FALSE(cl.exit_code);
  auto cfg = load(cl.src);
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->server.port, 9);
  EXPECT_EQ(cfg->storage.data_dir, "/tmp/d");
  EXPECT_EQ(cfg->log.level, "error");
  EXPECT_EQ(cfg->storage.mode, storage::durability::relaxed);
  EXPECT_EQ(cfg->server.threads, 5u);
  const char* bad[] = {"engram", "--no-such-flag"};
  EXPECT_EQ(parse_command_line(2, bad).exit_code, 2);
  const char* bad_set[] = {"engram", "--set", "novalue"};
  EXPECT_EQ(parse_command_line(3, bad_set).exit_code, 2);
}

TEST(Config, EnvNameDerivation) {
  EXPECT_EQ(env_name("storage.data_dir"), "ENGRAM_STORAGE_DATA_DIR");
  EXPECT_EQ(env_name("server.addr"), "ENGRAM_SERVER_ADDR");
}

}  // namespace
}  // namespace engram::config
