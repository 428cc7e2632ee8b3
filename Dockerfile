# Engram in a container, for users who run containers. Not built by this
# repository's CI (the build machine has no Docker engine); the package lists
# come from `ldd build/bin/engram` on Debian 12.
#
#   docker build -t engram .
#   docker run --rm -p 127.0.0.1:8080:8080 -v engram-data:/var/lib/engram engram
#
# Authentication is not built yet (see README): publish the port on a trusted
# interface only, as above.

FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# make deps installs the compiler and libraries from Debian's packages.
RUN make build BUILD_DIR=/build BUILD_TYPE=Release \
      CMAKE_ARGS="-DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_BENCH=OFF" JOBS="$(nproc)" \
 && make install BUILD_DIR=/build DESTDIR=/stage PREFIX=/usr/local

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libboost-url1.81.0 libfmt9 liblz4-1 libprometheus-cpp-core1.0 libprotobuf32 libsnappy1v5 \
      libsimdjson14 libspdlog1.10 libuuid1 libxapian30 libxxhash0 libyaml-cpp0.7 libzstd1 libbz2-1.0 \
      zlib1g \
      libjwt0 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/engram --shell /usr/sbin/nologin engram \
 && mkdir -p /var/lib/engram && chown engram:engram /var/lib/engram
COPY --from=build /stage/usr/local /usr/local
USER engram
WORKDIR /var/lib/engram
VOLUME /var/lib/engram
EXPOSE 8080
# Configuration: ENGRAM_<SECTION>_<KEY> variables, flags, or a mounted YAML file
# (--config /etc/engram/config.yaml); /usr/local/share/engram/config.example.yaml
# lists every key with its default.
ENV ENGRAM_SERVER_ADDR=0.0.0.0:8080 \
    ENGRAM_STORAGE_DATA_DIR=/var/lib/engram/data
# SIGTERM (docker stop) runs the graceful shutdown; give it time: docker stop -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/engram"]
