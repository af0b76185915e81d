#!/usr/bin/env bash
# The database's own ceiling for sagad's booking saga: PostgreSQL executing only the three
# statements sagad sends per happy-path saga (`saga.sql`, replayed by pgbench as prepared
# statements with generic plans, as sagad runs them), next to `pgbench -N` on the same server at
# the same client count. No sagad, no HTTP, no Stripe double, no LISTEN: whatever the replay
# reaches, sagad (which shares the machine's CPUs with them) cannot beat.
#
#   crates/sagad-bench/ceiling/run.sh [clients…]        (default: 8 16)
#
# Connects with the usual libpq variables (PGHOST, PGPORT, PGUSER) to a scratch server, creates
# the databases sagad_ceiling_pgbench and sagad_ceiling_sagas there (dropping earlier ones), and
# needs `pgbench`, `psql` and a built sagad (SAGAD, default target/release/sagad) on the way.
# ROUNDS (default 2) rounds per client count, each on a fresh saga database, of SECONDS_EACH
# (default 8) seconds. `sagad-bench` runs the same replay on each setting's own database (the
# "ceiling" lines of its report); this script is for trying schema or statement variants on a
# scratch server without rebuilding sagad.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sagad=${SAGAD:-$here/../../../target/release/sagad}
rounds=${ROUNDS:-2}
seconds=${SECONDS_EACH:-8}
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(8 16)
[ -x "$sagad" ] || { echo "no sagad binary at $sagad (cargo build --release --workspace, or set SAGAD)" >&2; exit 2; }
q() { PGOPTIONS="-c client_min_messages=warning" psql -qX -v ON_ERROR_STOP=1 "$@"; }
for tool in pgbench psql; do
    command -v "$tool" >/dev/null || { echo "$tool is not on PATH (PostgreSQL's client tools)" >&2; exit 2; }
done

export PGSSLMODE=${PGSSLMODE:-disable}  # as sagad talks to its embedded cluster
url="postgres://${PGUSER:-postgres}@${PGHOST:-127.0.0.1}:${PGPORT:-5432}"
q -d postgres -c 'DROP DATABASE IF EXISTS sagad_ceiling_pgbench' -c 'CREATE DATABASE sagad_ceiling_pgbench'
pgbench -i -q -s 1 sagad_ceiling_pgbench >/dev/null 2>&1

fresh_sagas_db() {
    q -d postgres -c 'DROP DATABASE IF EXISTS sagad_ceiling_sagas' -c 'CREATE DATABASE sagad_ceiling_sagas'
    DATABASE_URL="$url/sagad_ceiling_sagas" "$sagad" migrate >/dev/null 2>&1
    # The saga rows reference their definition; the replay needs the row, not its content.
    q -d sagad_ceiling_sagas -c \
        "INSERT INTO saga_definitions (name, version, fingerprint, definition) VALUES ('booking', 1, 'ceiling-replay', '{}')"
}

tps() { grep -o 'tps = [0-9.]*' | cut -d' ' -f3; }
printf '%8s %6s %14s %14s %7s\n' clients round 'pgbench -N' 'saga replay' ratio
for c in "${clients[@]}"; do
    for r in $(seq 1 "$rounds"); do
        fresh_sagas_db
        n=$(pgbench -n -N -c "$c" -j "$c" -T "$seconds" sagad_ceiling_pgbench 2>&1 | tps)
        out=$(PGOPTIONS='-c plan_cache_mode=force_generic_plan' \
            pgbench -n -M prepared -f "$here/saga.sql" -c "$c" -j "$c" -T "$seconds" sagad_ceiling_sagas 2>&1) || true
        s=$(echo "$out" | tps)
        if [ -z "$s" ] || echo "$out" | grep -q 'error'; then
            echo "the replay failed (has a statement changed? regenerate saga.sql with extract.py):" >&2
            echo "$out" | grep -m 3 -i 'error' >&2
            exit 1
        fi
        printf '%8s %6s %14.0f %14.1f %7.3f\n' "$c" "$r" "$n" "$s" "$(awk -v s="$s" -v n="$n" 'BEGIN { print s / n }')"
    done
done
completed=$(q -At -d sagad_ceiling_sagas -c "SELECT count(*) FILTER (WHERE status = 'completed') || ' of ' || count(*) FROM sagas")
echo "sagas completed by the last replay: $completed (each: 7 events, 5 step rows, a booking, a claim)"
