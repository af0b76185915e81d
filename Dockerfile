# syntax=docker/dockerfile:1
# Build: docker build -t sagad .
# Run:   docker run -e DATABASE_URL=postgres://… -e SAGAD_API_TOKENS=… -e STRIPE_SECRET_KEY=… -p 8080:8080 sagad

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits don't rebuild them: every workspace manifest with stub
# sources (cargo reads every member's targets), then the dependencies of the sagad binary.
COPY Cargo.toml Cargo.lock ./
COPY crates/stripe-double/Cargo.toml crates/stripe-double/
COPY crates/sagad-bench/Cargo.toml crates/sagad-bench/
COPY crates/test-support/Cargo.toml crates/test-support/
RUN mkdir -p src tests/it crates/stripe-double/src crates/sagad-bench/src crates/test-support/src \
    && for f in src/main.rs tests/it/main.rs crates/sagad-bench/src/main.rs; do echo 'fn main() {}' > "$f"; done \
    && for f in src/lib.rs crates/stripe-double/src/lib.rs crates/sagad-bench/src/lib.rs crates/test-support/src/lib.rs; do echo '' > "$f"; done \
    && cargo build --release --locked -p sagad --bin sagad 2>/dev/null || true
COPY . .
# The stubs above are newer than the copied sources: make cargo rebuild every workspace crate.
RUN find src crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p sagad --bin sagad

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system sagad && useradd --system --gid sagad --home-dir /app --shell /usr/sbin/nologin sagad
WORKDIR /app
COPY --from=build /src/target/release/sagad /usr/local/bin/sagad
COPY --from=build /src/sagas /app/sagas
COPY --from=build /src/policies /app/policies
COPY --from=build /src/webhooks /app/webhooks
USER sagad:sagad
ENV SAGAD_LISTEN=0.0.0.0:8080 \
    SAGAD_SAGAS_DIR=/app/sagas \
    SAGAD_CANCELLATION_POLICIES=/app/policies/cancellation.toml \
    SAGAD_LOG_FORMAT=json
# Probes: GET /healthz (liveness) and GET /readyz (readiness). Docker's own health check asks
# sagad itself (`sagad healthcheck` probes /readyz on SAGAD_LISTEN): no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/sagad", "healthcheck", "--timeout", "3s"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sagad"]
CMD ["serve"]
