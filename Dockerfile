# hermit-relay container image. Build: docker build -t hermit-relay .
# The build stage runs the same `cargo build --release --locked` as CI.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/hermit-relay hermit \
    && mkdir -p /var/lib/hermit-relay /etc/hermit-relay \
    && chown hermit /var/lib/hermit-relay
COPY --from=build /src/target/release/hermit-relay /usr/local/bin/hermit-relay
USER hermit
WORKDIR /var/lib/hermit-relay
ENV HERMIT__SERVER__BIND=0.0.0.0:8080
EXPOSE 8080
CMD ["hermit-relay"]
