# syntax=docker/dockerfile:1
# Build: docker build -t sagad .
# Run:   docker run -e DATABASE_URL=postgres://… -e SAGAD_API_TOKENS=… -e STRIPE_SECRET_KEY=… -p 8080:8080 sagad

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits don't rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked --bin sagad 2>/dev/null || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sagad

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system sagad && useradd --system --gid sagad --home-dir /app --shell /usr/sbin/nologin sagad
WORKDIR /app
COPY --from=build /src/target/release/sagad /usr/local/bin/sagad
COPY --from=build /src/sagas /app/sagas
COPY --from=build /src/webhooks /app/webhooks
USER sagad:sagad
ENV SAGAD_LISTEN=0.0.0.0:8080 \
    SAGAD_SAGAS_DIR=/app/sagas \
    SAGAD_LOG_FORMAT=json
# Probes: GET /healthz (liveness) and GET /readyz (readiness).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sagad"]
CMD ["serve"]
