# hermit-relay container image.
#   docker build -t hermit-relay .
#   docker run -p 8080:8080 -v hermit-data:/var/lib/hermit-relay hermit-relay
# The build stage runs the same `cargo build --release --locked` as CI. SQLite and the
# PostgreSQL client are compiled in, so the runtime image needs no database libraries.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: the manifests and the lock file with stub
# sources, so a change to the code reuses this layer and rebuilds only the relay itself.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked \
    && rm -rf src bench/src target/release/.fingerprint/hermit-relay-* \
        target/release/deps/*hermit_relay* target/release/hermit-relay*
COPY . .
# The copied sources may be older than the stub build: touch them so cargo rebuilds.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/hermit-relay hermit \
    && mkdir -p /var/lib/hermit-relay /etc/hermit-relay \
    && chown hermit /var/lib/hermit-relay
COPY --from=build /src/target/release/hermit-relay /usr/local/bin/hermit-relay
COPY config/production.toml /etc/hermit-relay/config.toml
USER hermit
WORKDIR /var/lib/hermit-relay
VOLUME /var/lib/hermit-relay
ENV HERMIT_CONFIG=/etc/hermit-relay/config.toml
# The config file binds 0.0.0.0:8080: no HERMIT__SERVER__BIND here, since an environment
# variable would silently beat the bind of a config file mounted over it.
EXPOSE 8080
# Docker's stop timeout is 10 s; server.shutdown_timeout_secs (8) stays below it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["hermit-relay", "healthcheck"]
CMD ["hermit-relay", "serve"]
