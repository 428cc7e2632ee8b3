// Lock request bodies, decoded without a server (the handler authorizes after).

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "gateway/lock_params.hpp"

namespace engram::gateway {
namespace {

using model::json;
using namespace std::chrono_literals;

TEST(LockParams, AcquireReadsEveryField) {
  auto one = parse_acquire_body(json::parse(R"({"resource_path":"repo/main","ttl_ms":1500,"wait_ms":200,
                                                "context_id":"c1","agent_id":"a"})"),
                                "header");
  ASSERT_TRUE(one) << one.error().message;
  EXPECT_FALSE(one->multi);
  EXPECT_EQ(one->request.resources, std::vector<std::string>{"repo/main"});
  EXPECT_EQ(one->request.ttl, 1500ms);
  EXPECT_EQ(one->request.wait, 200ms);
  EXPECT_EQ(one->request.context_id, "c1");
  EXPECT_EQ(one->request.agent, "a");

  auto pair = parse_acquire_body(json::parse(R"({"resource_paths":["a","b"],"ttl_seconds":2.5,"agent_id":""})"), "header");
  ASSERT_TRUE(pair) << pair.error().message;
  EXPECT_TRUE(pair->multi);
  EXPECT_EQ(pair->request.resources.size(), 2u);
  EXPECT_EQ(pair->request.ttl, 2500ms);
  EXPECT_EQ(pair->request.agent, "header");  // an empty agent_id defers to X-Agent-ID
  EXPECT_EQ(pair->request.wait, 0ms);
}

TEST(LockParams, DurationsSaturateInsteadOfOverflowing) {
  // 1e300 s used to be converted to int64 milliseconds unchecked (undefined behaviour).
  auto huge = parse_acquire_body(json::parse(R"({"resource_path":"r","ttl_seconds":1e300,"wait_ms":-1e300})"), "a");
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->request.ttl, std::chrono::milliseconds(int64_t(1e12)));
  EXPECT_EQ(huge->request.wait, 0ms);
  auto fraction = parse_acquire_body(json::parse(R"({"resource_path":"r","wait_ms":2500.7,"ttl_ms":-5})"), "a");
  ASSERT_TRUE(fraction);
  EXPECT_EQ(fraction->request.wait, 2500ms);
  EXPECT_EQ(fraction->request.ttl, -5ms);  // <= 0: the manager's default
}

TEST(LockParams, RefusalsNameTheField) {
  auto message = [](const char* body) {
    auto r = parse_acquire_body(json::parse(body), "a");
    return r ? std::string("accepted") : r.error().message;
  };
  EXPECT_EQ(message(R"({})"), "resource_path (a string) or resource_paths (an array) is required");
  EXPECT_EQ(message(R"({"resource_path":""})"), "resource_path is required");
  EXPECT_EQ(message(R"({"resource_paths":[]})"), "resource_paths must be a non-empty array of strings");
  EXPECT_EQ(message(R"({"resource_paths":["a",1]})"), "resource_paths must be a non-empty array of strings");
  EXPECT_EQ(message(R"({"resource_path":"r","ttl_ms":"5"})"), "ttl_ms must be a number");
  EXPECT_EQ(message(R"({"resource_path":"r","wait_ms":true})"), "wait_ms must be a number");
  EXPECT_EQ(message(R"({"resource_path":"r","context_id":7})"), "context_id must be a string");
  EXPECT_EQ(message(R"({"resource_path":"r","agent_id":7})"), "agent_id must be a string");
}

TEST(LockParams, Renew) {
  auto r = parse_renew_body(json::parse(R"({"lock_id":"L","ttl_seconds":3})"), "header");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->agent, "header");
  EXPECT_EQ(r->lock_id, "L");
  EXPECT_EQ(r->ttl, 3000ms);
  EXPECT_FALSE(parse_renew_body(json::object(), "a"));
  EXPECT_FALSE(parse_renew_body(json::parse(R"({"lock_id":"L","ttl_seconds":"3"})"), "a"));
  EXPECT_FALSE(parse_renew_body(json::parse(R"({"lock_id":"L","agent_id":["x"]})"), "a"));
}

TEST(LockParams, Fence) {
  std::vector<storage::fence> fences;
  EXPECT_TRUE(parse_fence(json::parse(R"({"fence":null})"), fences));
  EXPECT_TRUE(fences.empty());
  ASSERT_TRUE(parse_fence(json::parse(R"({"fence":{"resource":"r","token":9}})"), fences));
  ASSERT_EQ(fences.size(), 1u);
  EXPECT_EQ(fences[0].resource, "r");
  EXPECT_EQ(fences[0].token, 9u);
  EXPECT_FALSE(parse_fence(json::parse(R"({"fence":{"resource":"r","token":-1}})"), fences));
  EXPECT_FALSE(parse_fence(json::parse(R"({"fence":{"resource":"","token":1}})"), fences));
  EXPECT_FALSE(parse_fence(json::parse(R"({"fence":[1]})"), fences));
}

}  // namespace
}  // namespace engram::gateway
