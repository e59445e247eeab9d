# demo-server for a fleet: multi-stage, the final image holds one binary.
#   docker build -t snapsync-demo-server .
# The build stage compiles with the `agones` feature (the official Agones SDK, whose gRPC
# code generation needs protoc).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p demo-server --features agones \
    && cp target/release/demo-server /demo-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 snapsync && mkdir /keys && chown snapsync /keys
COPY --from=build /demo-server /usr/local/bin/demo-server
USER snapsync
# 7777/udp: the game; 8080/tcp: connect tokens; 9464/tcp: metrics, /health, /ready.
EXPOSE 7777/udp 8080/tcp 9464/tcp
ENTRYPOINT ["demo-server", "--bind", "0.0.0.0:7777", "--http", "0.0.0.0:8080", \
            "--metrics", "0.0.0.0:9464", "--key-file", "/keys/server.key"]
