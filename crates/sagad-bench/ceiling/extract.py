"""Turns the three statements PostgreSQL logged for one completed booking saga into a pgbench
script (`saga.sql`) that replays them with fresh ids on every transaction.

    python3 extract.py <postgresql log with log_statement=all> <saga id> > saga.sql

Every id in the parameters (saga, events, hold, idempotency key), the listing, the PaymentIntent
and the confirmation code become functions of a random `:r`, so each replay is a new saga on a
new listing; the hold expires in 2099. Placeholders the SQL does not cast get a type from
`TYPES` / `NULL_TYPES` (keyed by statement and parameter number: update them when the statements
in `src/store/sagas.rs` or `src/engine/start.rs` change their parameters).
"""
import re
import sys

if len(sys.argv) != 3:
    sys.exit('usage: extract.py <postgresql log with log_statement=all> <id of a completed booking saga>')
log = open(sys.argv[1]).read().split('\n')
sid = sys.argv[2]
entries = []
i = 0
while i < len(log):
    m = re.search(r'LOG:  execute [^:]*: (.*)', log[i])
    if m:
        sql = [m.group(1)]; j = i + 1
        while j < len(log) and log[j].startswith('\t'):
            sql.append(log[j]); j += 1
        params = {}
        if j < len(log) and 'DETAIL:  parameters:' in log[j]:
            p = log[j].split('DETAIL:  parameters: ', 1)[1]
            for pm in re.finditer(r"\$(\d+) = (NULL|'(?:[^']|'')*')", p):
                params[int(pm.group(1))] = pm.group(2)
        entries.append(('\n'.join(sql), params)); i = j
    else:
        i += 1
mine = [e for e in entries if e[1].get(1) == "'" + sid + "'" and e[0].lstrip().startswith('WITH')]
if len(mine) != 3:
    sys.exit('found %d statements for saga %s in the log, not 3 (start, capture/confirm outcome, '
             'notification outcome): is it a completed booking saga, logged with log_statement=all?'
             % (len(mine), sid))
every = ' '.join(v for _, params in mine for v in params.values())
listing = re.search(r'"listing_id": "([^"]+)"', every)
expiry = re.search(r'"expires_at": "(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?Z"', every)
if not listing or not expiry:
    sys.exit('no listing_id or hold expires_at in the statements\' parameters: not a booking saga?')
uu = []
for _, params in mine:
    for v in params.values():
        for m in re.finditer(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', v):
            if m.group(0) not in uu: uu.append(m.group(0))
def templ(v):
    for k, u in enumerate(uu):
        v = v.replace(u, '%08x-0000-7000-8000-\x00' % (k + 1))
    v = v.replace(listing.group(1), 'L-\x00')
    v = re.sub(r'pi_[A-Za-z0-9]+', 'pi_\x00', v)
    v = re.sub(r'BK-[A-Z0-9]+', 'BK-\x00', v)
    # The hold's expiry, as JSON (…T…Z) and as a timestamptz parameter (… …+00, trailing zeros
    # of the fraction dropped): far ahead.
    v = re.sub(re.escape(expiry.group(1)) + '[ T]' + re.escape(expiry.group(2)) + r'(\.\d+)?(\+00|Z)',
               '2099-01-01T00:00:00Z', v)
    return v
# types of placeholders that carry no cast in the SQL, by statement: start, outcome, outcome
TYPES = [{1: 'uuid', 4: 'jsonb', 5: 'text', 7: 'text'}, {1: 'uuid', 5: 'text', 9: 'jsonb'}, {1: 'uuid', 5: 'text', 9: 'jsonb'}]
NULL_TYPES = [{}, {10: 'timestamptz', 12: 'text', 13: 'timestamptz', 14: 'text', 15: 'text'}, {10: 'timestamptz', 12: 'text', 13: 'timestamptz', 14: 'text', 15: 'text'}]
out = []
for si, (sql, params) in enumerate(mine):
    for n in sorted(params, reverse=True):
        v = templ(params[n])
        def rep(m):
            cast = m.group(1) or ''
            if v == 'NULL':
                t = NULL_TYPES[si].get(n)
                return 'NULL' + (cast or ('::' + t if t else ''))
            if '\x00' not in v:
                return v + cast
            expr = " || :r::text || ".join("'" + part + "'" for part in v[1:-1].split('\x00'))
            if not cast:
                t = TYPES[si].get(n)
                assert t, (si, n, v[:60])
                cast = '::' + t
            return '(' + expr + ')' + cast
        sql = re.sub(r'\$%d(?!\d)(::[a-z0-9_]+(?:\[\])?)?' % n, rep, sql)
    out.append(' '.join(l.strip() for l in sql.split('\n')) + ';')
print('\\set r random(100000000000, 999999999999)')
print('\n'.join(out))
