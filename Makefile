# Engram — the front door. `make run` and `make test` are all a new user needs.
#
#   make deps    install build dependencies from Debian's packages (as root, non-interactive)
#   make test-deps  also what the tests need: chromium, firefox-esr, Node.js, playwright-core, the
#                MCP SDK and conformance suite (npm ci in tests/browser and tests/mcp, from their lock files)
#   make build   configure and build everything (build/)
#   make run     build the server and engramctl only, and start the server on ./data
#                (config: config.example.yaml)
#   make test    build and run every test through CTest
#   make bench   build the load tool and run the benchmarks (see bench/README.md)
#   make bench-peers  Engram beside Redis, NATS and nginx, interleaved in one run
#                (bench/peers.sh; installs those peers from Debian's packages)
#   make install install engram, engramctl, the C++ SDK, the config example and a
#                systemd unit under PREFIX (default /usr/local; DESTDIR for staging);
#                binaries are installed stripped (the build keeps its debug info for perf)
#   make asan    build and test with AddressSanitizer + UBSan (build-asan/)
#   make tsan    build and test with ThreadSanitizer (build-tsan/)
#   make fuzz    build the libFuzzer targets with clang (build-fuzz/) and run each for
#                FUZZ_SECONDS (default 60); FUZZ_MERGE=1 adds new inputs to
#                tests/fuzz/corpus (see tests/fuzz/README.md)
#   make clean   remove build directories

BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_ARGS ?=
PREFIX ?= /usr/local

DEBIAN_PACKAGES := build-essential cmake pkg-config git ca-certificates curl jq \
  libboost1.81-dev libboost-url1.81-dev \
  librocksdb-dev libprotobuf-dev protobuf-compiler nlohmann-json3-dev libsimdjson-dev \
  libxapian-dev libhnswlib-dev libyaml-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev \
  libcli11-dev libspdlog-dev libfmt-dev prometheus-cpp-dev libxxhash-dev \
  libjwt-dev libssl-dev

# What the browser tests need beyond the build (Node.js only if the machine has none).
TEST_PACKAGES := chromium firefox-esr
# libFuzzer: clang 16 is the oldest Debian clang that compiles libstdc++ 12's
# std::expected (see CMakeLists.txt).
FUZZ_PACKAGES := clang-16 libclang-rt-16-dev
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request_json query ws_message storage_record token

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test-deps fuzz-deps build run test bench bench-peers install asan tsan fuzz clean

# Installs only the packages of $(1) that are missing, so repeated runs cost a dpkg query.
define install_missing
@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
$(2) \
if [ -n "$$missing" ]; then \
  echo "installing:" $$missing; \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

deps:
	$(call install_missing,$(DEBIAN_PACKAGES))

test-deps: deps
	$(call install_missing,$(TEST_PACKAGES),command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm";)
	@[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund)
	@[ -d tests/mcp/node_modules/@modelcontextprotocol/sdk ] && [ -d tests/mcp/node_modules/@modelcontextprotocol/conformance ] \
	  || (cd tests/mcp && npm ci --no-audit --no-fund)

fuzz-deps: deps
	$(call install_missing,$(FUZZ_PACKAGES))

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target engram engramctl
	$(BUILD_DIR)/bin/engram --config config.example.yaml

test: test-deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

bench: build
	bench/run.sh $(BUILD_DIR)

bench-peers: build
	bench/peers.sh $(BUILD_DIR)

install: build
	DESTDIR=$(DESTDIR) cmake --install $(BUILD_DIR) --prefix $(PREFIX) --strip

asan:
	$(MAKE) test BUILD_DIR=build-asan BUILD_TYPE=Debug CMAKE_ARGS="-DENGRAM_ASAN=ON -DENGRAM_BUILD_BENCH=OFF"

tsan:
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp history_size=7" $(MAKE) test BUILD_DIR=build-tsan BUILD_TYPE=Debug CMAKE_ARGS="-DENGRAM_TSAN=ON -DENGRAM_BUILD_BENCH=OFF"

fuzz: fuzz-deps
	[ -f $(FUZZ_DIR)/CMakeCache.txt ] || CXX=clang++-16 cmake -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DENGRAM_FUZZ=ON -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_BENCH=OFF
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	FUZZ_MERGE=$(FUZZ_MERGE) tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf build build-asan build-tsan build-fuzz
