#!/usr/bin/env bash
# Service benchmark: `ociup serve`, two replicas over one catalog in a real registry (CNCF
# Distribution, `docker-registry serve`, on 127.0.0.1), under load from wrk (not ours).
#
#   bash benches/serve.sh              # from the repository root (or from anywhere)
#
# Setup (not measured): a fresh registry (benches/lib.sh); fixtures/base v1 copied to
# HOST/base/b0..b9:latest; BENCH_NICKS (100) nicks n0..n99, nick K on base b(K mod 10), target
# HOST/apps/nK, one added file and an env of its own, registered signed (a key of the run) into
# the catalog HOST/ociup/catalog; one requester token; two replicas `ociup serve` on free
# loopback ports, same catalog, key and allowlist, each with a cache directory of its own
# (as on two machines), --max-regenerations BENCH_MAX_REGENERATIONS (64).
#
# Load: wrk (Debian's `wrk`; a Lua script of this run POSTs /v1/nicks/nK/resolve with the bearer
# token, nicks in turn from a different start per thread). There is no load balancer: wrk's
# threads are spread over the two replicas' ports (thread.addr), half the connections each.
#
# 1. Upgrade pass: bases b0..b4 move to v2 (50 nicks due); then exactly BENCH_REQUESTS (2,000)
#    requests from BENCH_CLIENTS (100) connections: 100 wrk threads of one connection each,
#    each stopping after its share (wrk is stopped with SIGINT once the replicas' /metrics
#    count them all). Checked: no request failed (wrk errors, non-200 answers), every moved
#    nick has exactly one new version and no other nick has one (history of every nick).
# 2. Nothing due, two ways, BENCH_RUNS (7) runs of BENCH_SECONDS (5 s) each, after a 2 s warm-up,
#    interleaved run by run with each other and with (3):
#    a. SATURATION (closed loop): `wrk -t2 -c BENCH_CLIENTS`, each connection sending its next
#       request as soon as the answer comes. Gives the capacity (resolves/s); its latency is
#       mostly queueing: by Little's law p50 ~ BENCH_CLIENTS / throughput (100 connections at
#       2,500/s wait ~40 ms whatever one answer costs), so read it as "how much", not "how fast".
#    b. PACED (offered load): BENCH_CLIENTS clients (wrk threads of one connection) each asking
#       BENCH_RATE / BENCH_CLIENTS times a second (1,000 / 100 = 10/s: one request every 100 ms
#       on a schedule, the wait before each computed from a monotonic clock, a random phase per
#       client; wrk's `delay()`, not counted in the latency). Gives the latency at the target
#       load: p50 and p99 (wrk's), and the rate achieved (below BENCH_RATE when answers are
#       slower than the schedule: a client never has two requests out).
#    Both: failures (non-200, socket errors); then no nick has a new version. The registry
#    requests they caused (access log) and the replicas' CPU (user + system, /proc) per answer.
# 3. Floor: the requests one nothing-due `ociup resolve` makes (its access-log lines, the
#    per-process `GET /v2/` left out) replayed by wrk straight at the registry, every nick in
#    turn, same connections and duration, BENCH_RUNS runs interleaved with (2): the registry's
#    requests/s, and that divided by the requests per resolve = the resolves/s a service that
#    makes those requests for every answer could at best give.
# 4. Baseline: the same kind of load as one `ociup resolve nK --json` process per request,
#    BENCH_BASELINE (400) requests, BENCH_CLIENTS at once (a Python thread pool spawning them):
#    requests/s, median and p99 of each process's wall time.
# Peak RSS per replica: VmHWM of /proc/PID/status at the end.
#
# Targets (reported, never failing the script): nothing due median < 20 ms and p99 < 200 ms
# (paced at BENCH_RATE, and saturated), >= 1,000 resolves/s (saturated; and the rate the paced
# run achieved); < 100 MiB per replica; every moved nick upgraded once; no failure.
# The exit status is non-zero only when setup fails or a check (versions, failures) fails.
#
# Settings: BENCH_RUNS=7 BENCH_SECONDS=5 BENCH_NICKS=100 BENCH_BASES=10 BENCH_MOVED=5
# BENCH_REQUESTS=2000 BENCH_CLIENTS=100 BENCH_BASELINE=400 (0: no baseline)
# BENCH_MAX_REGENERATIONS=64 BENCH_RATE=1000 (the paced run's total offered resolves/s; 0: no
# paced run) BENCH_FRESH_WITHIN=MS (the replicas' --fresh-within; not given by default: a binary
# without the flag can be measured too)
# The final figures, both freshness settings (about 4 minutes each on 2 cores):
#   bash benches/serve.sh; BENCH_FRESH_WITHIN=1000 bash benches/serve.sh
# A quick look (one run of each): BENCH_RUNS=1 BENCH_SECONDS=3 BENCH_BASELINE=0 bash benches/serve.sh
# BENCH_WORKDIR=DIR (kept) BENCH_JSON=PATH (benches/results/serve.json) OCIUP=PATH (default:
# builds target/release/ociup; copied into the work directory). Needs bash 5, curl, python3, GNU
# time, docker-registry and wrk (apt-get install -y wrk). Only 127.0.0.1 is contacted. About 4
# minutes on 2 cores. BENCH_PERF=1: `perf record -g` of replica a during the first saturation
# run, into WORK/perf-a.data (with BENCH_WORKDIR to keep it; `perf report -i` it).
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
unset SOURCE_DATE_EPOCH HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
unset OCIUP_CATALOG OCIUP_SIGNING_KEY OCIUP_USERNAME OCIUP_PASSWORD OCIUP_SERVER OCIUP_TOKEN

cd "$(dirname "$0")/.."
ROOT=$PWD
. benches/lib.sh

RUNS=${BENCH_RUNS:-7}
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
NICKS=${BENCH_NICKS:-100}
BASES=${BENCH_BASES:-10}
MOVED=${BENCH_MOVED:-5}
REQUESTS=${BENCH_REQUESTS:-2000}
CLIENTS=${BENCH_CLIENTS:-100}
BASELINE=${BENCH_BASELINE:-400}
MAX_REGEN=${BENCH_MAX_REGENERATIONS:-64}
RATE=${BENCH_RATE:-1000}
FRESH_WITHIN=${BENCH_FRESH_WITHIN:-}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/serve.json}
[ $((REQUESTS % CLIENTS)) = 0 ] || die "BENCH_REQUESTS must be a multiple of BENCH_CLIENTS"
[[ $RATE =~ ^[0-9]+$ ]] || die "BENCH_RATE must be a whole number of resolves/s"
bench_need python3 curl docker-registry wrk
bench_ociup
bench_workdir ociup-serve
mkdir -p "$WORK/bin"
cp "$OCIUP" "$WORK/bin/ociup" # a snapshot: others may rebuild target/release meanwhile
OCIUP=$WORK/bin/ociup
rm -rf "$WORK/files" "$WORK/out" "$WORK/requests" "$WORK/wrk" "$WORK"/replica-*
mkdir -p "$WORK/files" "$WORK/wrk"
start_registry registry
H=$REG_HOST
export OCIUP_CATALOG=$H/ociup/catalog OCIUP_ACTOR=bench SOURCE_DATE_EPOCH=1700000000
export XDG_CACHE_HOME=$WORK/cli-cache
REPLICA_PIDS=()
stop_replicas() {
  local p
  for p in "${REPLICA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${REPLICA_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  REPLICA_PIDS=()
}
trap 'stop_replicas; bench_cleanup' EXIT
q() { "$OCIUP" "$@" >/dev/null; }

log "machine: $(bench_machine)"
log "setup: $NICKS nicks on $BASES bases in $H"
"$OCIUP" keygen --out "$WORK/files/signer" >/dev/null
export OCIUP_SIGNING_KEY=$WORK/files/signer.key
for ((b = 0; b < BASES; b++)); do q copy "oci:$ROOT/fixtures/base:v1" "$H/base/b$b:latest"; done
echo "mode = bench" >"$WORK/files/app.conf"
for ((k = 0; k < NICKS; k++)); do
  q register "n$k" --base "$H/base/b$((k % BASES)):latest" --to "$H/apps/n$k" \
    --add "$WORK/files/app.conf:/etc/app.conf" --env "NICK=n$k"
done
TOKEN=$("$OCIUP" token create bench --role requester --file "$WORK/files/tokens.json")

# start_replica NAME: an `ociup serve` on a free port; appends to REPLICA_PIDS and ADDRS.
ADDRS=()
start_replica() {
  local dir=$WORK/replica-$1 line
  mkdir -p "$dir"
  XDG_CACHE_HOME=$dir/cache "$OCIUP" serve --listen 127.0.0.1:0 --tokens "$WORK/files/tokens.json" \
    --catalog "$H/ociup/catalog" --allow-read "$H/base/*" --allow-write "$H/apps/*" \
    --allow-write "$H/ociup/catalog" --sign-key "$WORK/files/signer.key" \
    --max-regenerations "$MAX_REGEN" ${FRESH_WITHIN:+--fresh-within "$FRESH_WITHIN"} \
    >"$dir/stdout" 2>"$dir/log" &
  REPLICA_PIDS+=($!)
  local i
  for ((i = 0; i < 200; i++)); do
    line=$(head -n 1 "$dir/stdout" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "${REPLICA_PIDS[-1]}" 2>/dev/null || die "replica $1 exited: $(tail -n 5 "$dir/log")"
    sleep 0.05
  done
  [ -n "$line" ] || die "replica $1 printed no address: $(tail -n 5 "$dir/log")"
  ADDRS+=("${line#ociup serve: listening on http://}")
}
start_replica a
start_replica b
log "replicas on ${ADDRS[*]} (pids ${REPLICA_PIDS[*]})"

# resolves_answered: the resolve requests both replicas counted (their /metrics).
resolves_answered() {
  local a total=0 n
  for a in "${ADDRS[@]}"; do
    n=$(curl -fsS "http://$a/metrics" | awk '/^ociup_http_requests_total\{route="\/v1\/nicks\/\{nick\}\/resolve"/ { s += $2 } END { print s + 0 }')
    total=$((total + n))
  done
  echo "$total"
}
# replica_cpu_ticks: user + system CPU of both replicas so far, in clock ticks.
replica_cpu_ticks() {
  local p t=0
  for p in "${REPLICA_PIDS[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
TICK_HZ=$(getconf CLK_TCK)
upgrades_counted() {
  local a
  for a in "${ADDRS[@]}"; do
    curl -fsS "http://$a/metrics" | awk '/^ociup_upgrades_total/ { s += $2 } END { printf "%d ", s + 0 }'
  done
}

cat >"$WORK/wrk/resolve.lua" <<'EOF'
-- POST /v1/nicks/nK/resolve with the bearer token; threads spread over WRK_ADDRS; a thread
-- stops after WRK_QUOTA answers when set. done() prints one JSON line.
local threads, counter = {}, 0
function setup(thread)
  local addrs = {}
  for a in string.gmatch(os.getenv("WRK_ADDRS"), "[^,]+") do
    local host, port = a:match("^(.+):(%d+)$")
    table.insert(addrs, wrk.lookup(host, port)[1])
  end
  thread.addr = addrs[counter % #addrs + 1]
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  nicks = tonumber(os.getenv("WRK_NICKS"))
  quota = tonumber(os.getenv("WRK_QUOTA") or "0")
  hdrs = { ["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN"), ["Content-Type"] = "application/json" }
  i = id * 37
  answered, failed = 0, 0
end
function request()
  i = i + 1
  return wrk.format("POST", "/v1/nicks/n" .. (i % nicks) .. "/resolve", hdrs, "{}")
end
function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then failed = failed + 1 end
  if quota > 0 and answered >= quota then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local answered_all, failed_all = 0, 0
  for _, t in ipairs(threads) do
    answered_all = answered_all + t:get("answered")
    failed_all = failed_all + t:get("failed")
  end
  local e = summary.errors
  io.write(string.format('{"requests": %d, "answered": %d, "non_200": %d, "duration_s": %.3f, ' ..
    '"errors": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, answered_all, failed_all, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
EOF
# The paced variant: the same requests on a schedule. wrk calls delay() before each request of
# a thread and starts its latency clock after it; one connection per thread, so each thread is
# one client asking WRK_RATE times a second (a random phase, then every 1/WRK_RATE s by a
# monotonic clock: a late answer shortens the next wait, never below 0, and is not made up by
# a burst).
cat "$WORK/wrk/resolve.lua" - >"$WORK/wrk/paced.lua" <<'LUA'
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval, next_at
function delay()
  if not interval then
    interval = 1000 / tonumber(os.getenv("WRK_RATE"))
    math.randomseed(id * 7919 + 1)
    next_at = now_ms() + math.random() * interval
  else
    next_at = next_at + interval
  end
  local wait = next_at - now_ms()
  if wait < 0 then
    next_at = now_ms()
    return 0
  end
  return math.floor(wait + 0.5)
end
LUA
export WRK_ADDRS WRK_NICKS=$NICKS WRK_TOKEN=$TOKEN
WRK_ADDRS=$(IFS=,; echo "${ADDRS[*]}")

# wrk_json OUT: the JSON line of a wrk run's output.
wrk_json() { grep '^{"requests"' "$1" || die "wrk printed no summary: $(cat "$1")"; }

# history_lengths: "nick versions" for every nick.
history_lengths() {
  local k
  for ((k = 0; k < NICKS; k++)); do
    echo "n$k $("$OCIUP" history "n$k" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
  done
}

# 1. The upgrade pass.
for ((b = 0; b < MOVED; b++)); do q copy "oci:$ROOT/fixtures/base:v2" "$H/base/b$b:latest"; done
log "pass 1: $REQUESTS requests, $CLIENTS connections, bases b0..b$((MOVED - 1)) moved"
before=$(resolves_answered)
t0=$EPOCHREALTIME
WRK_QUOTA=$((REQUESTS / CLIENTS)) wrk -t "$CLIENTS" -c "$CLIENTS" -d 600s --timeout 60s \
  -s "$WORK/wrk/resolve.lua" "http://${ADDRS[0]}" >"$WORK/wrk/upgrade.out" 2>&1 &
WRK_PID=$!
while [ $(($(resolves_answered) - before)) -lt "$REQUESTS" ]; do
  kill -0 "$WRK_PID" 2>/dev/null || break
  sleep 0.05
done
t1=$EPOCHREALTIME
sleep 0.2
kill -INT "$WRK_PID" 2>/dev/null || true
wait "$WRK_PID" || true
UPGRADE=$(wrk_json "$WORK/wrk/upgrade.out")
UPGRADE_WALL=$(python3 -c "print(round($t1 - $t0, 3))")
UPGRADE_SERVED=$(($(resolves_answered) - before))
UPGRADES=$(upgrades_counted)
log "pass 1: $UPGRADE (served $UPGRADE_SERVED in ${UPGRADE_WALL} s; upgrades per replica: $UPGRADES)"
history_lengths >"$WORK/history-1.txt"

# 2 and 3: nothing due, interleaved with the floor.
log "floor: the requests of one nothing-due ociup resolve"
q resolve n0 --json # blobs into the local cache first, as a warm process has them
res=$(measure probe "$OCIUP" resolve n0 --json)
grep -v ' "GET /v2/ HTTP' "$WORK/requests/probe.log" | sed -E 's/^[^"]*"([A-Z]+) ([^ ]+) HTTP.*$/\1 \2/' >"$WORK/floor-requests.txt"
[ -s "$WORK/floor-requests.txt" ] || die "no requests logged for a resolve"
log "  $(wc -l <"$WORK/floor-requests.txt") requests: $(tr '\n' ';' <"$WORK/floor-requests.txt")"
python3 - "$WORK/floor-requests.txt" "$BASES" >"$WORK/wrk/floor.lua" <<'EOF'
import sys
reqs = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("local reqs = {")
for method, uri in reqs:
    uri = uri.replace("nick.n0", "nick.n%d").replace("/base/b0/", "/base/b%d/").replace("/apps/n0/", "/apps/n%d/")
    print('  {"%s", "%s"},' % (method, uri))
print("}")
print("local bases = %s" % sys.argv[2])
EOF
cat >>"$WORK/wrk/floor.lua" <<'EOF'
local accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " ..
  "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"
local threads, counter = {}, 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  nicks = tonumber(os.getenv("WRK_NICKS"))
  i, step = id * 37, 0
  failed = 0
end
function request()
  step = step + 1
  if step > #reqs then step, i = 1, i + 1 end
  local k = i % nicks
  local r = reqs[step]
  local uri = r[2]:gsub("%%d", tostring(k), 1)
  if r[2]:find("/base/b%%d/") then uri = r[2]:gsub("%%d", tostring(k % bases), 1) end
  -- HEAD goes as GET: wrk waits for the body a HEAD answer's Content-Length announces (its
  -- parser is not told the method), so a HEAD would hang the connection. A GET costs the
  -- registry at least as much, so the floor stays a floor.
  local method = r[1] == "HEAD" and "GET" or r[1]
  return wrk.format(method, uri, { ["Accept"] = accept })
end
function response(status, headers, body)
  if status >= 300 then failed = failed + 1 end
end
function done(summary, latency, requests)
  local failed_all = 0
  for _, t in ipairs(threads) do failed_all = failed_all + t:get("failed") end
  local e = summary.errors
  io.write(string.format('{"requests": %d, "non_2xx": %d, "duration_s": %.3f, "errors": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f, "per_resolve": %d}\n', summary.requests, failed_all,
    summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, #reqs))
end
EOF

log "pass 2: nothing due, warm-up then $RUNS runs of ${SECONDS_PER_RUN} s each: saturation, paced at $RATE/s, floor"
wrk -t2 -c "$CLIENTS" -d 2s --timeout 30s -s "$WORK/wrk/resolve.lua" "http://${ADDRS[0]}" >"$WORK/wrk/warm.out" 2>&1
: >"$WORK/nothing-due.jsonl"
: >"$WORK/paced.jsonl"
: >"$WORK/floor.jsonl"
KINDS=(serve floor)
[ "$RATE" = 0 ] || KINDS+=(paced)
for ((r = 1; r <= RUNS; r++)); do
  bench_rotate "$r" "${KINDS[@]}"
  for what in "${ORDER[@]}"; do
    if [ "$what" = paced ]; then
      lines0=$(wc -l <"$REG_DIR/access.log")
      load=$(bench_load)
      cpu0=$(replica_cpu_ticks)
      WRK_RATE=$(python3 -c "print($RATE / $CLIENTS)") wrk -t "$CLIENTS" -c "$CLIENTS" \
        -d "${SECONDS_PER_RUN}s" --timeout 30s -s "$WORK/wrk/paced.lua" "http://${ADDRS[0]}" \
        >"$WORK/wrk/paced-$r.out" 2>&1
      cpu1=$(replica_cpu_ticks)
      lines1=$(wc -l <"$REG_DIR/access.log")
      echo "$(wrk_json "$WORK/wrk/paced-$r.out" | sed "s/}\$/, \"registry_requests\": $((lines1 - lines0)), \"replica_cpu_s\": $(python3 -c "print(($cpu1 - $cpu0) / $TICK_HZ)"), \"load\": \"$load\"}/")" >>"$WORK/paced.jsonl"
    elif [ "$what" = serve ]; then
      lines0=$(wc -l <"$REG_DIR/access.log")
      load=$(bench_load)
      cpu0=$(replica_cpu_ticks)
      PERF_PID=
      if [ -n "${BENCH_PERF:-}" ] && [ "$r" = 1 ]; then
        perf record -q -F 499 -g -p "${REPLICA_PIDS[0]}" -o "$WORK/perf-a.data" -- sleep "$SECONDS_PER_RUN" 2>"$WORK/perf.log" &
        PERF_PID=$!
      fi
      wrk -t2 -c "$CLIENTS" -d "${SECONDS_PER_RUN}s" --timeout 30s -s "$WORK/wrk/resolve.lua" \
        "http://${ADDRS[0]}" >"$WORK/wrk/due-$r.out" 2>&1
      cpu1=$(replica_cpu_ticks)
      [ -z "$PERF_PID" ] || wait "$PERF_PID" || log "perf record failed: $(tail -n 3 "$WORK/perf.log")"
      lines1=$(wc -l <"$REG_DIR/access.log")
      echo "$(wrk_json "$WORK/wrk/due-$r.out" | sed "s/}\$/, \"registry_requests\": $((lines1 - lines0)), \"replica_cpu_s\": $(python3 -c "print(($cpu1 - $cpu0) / $TICK_HZ)"), \"load\": \"$load\"}/")" >>"$WORK/nothing-due.jsonl"
    else
      wrk -t2 -c "$CLIENTS" -d "${SECONDS_PER_RUN}s" --timeout 30s -s "$WORK/wrk/floor.lua" \
        "http://$H" >"$WORK/wrk/floor-$r.out" 2>&1
      grep '^{"requests"' "$WORK/wrk/floor-$r.out" >>"$WORK/floor.jsonl" || die "wrk (floor): $(cat "$WORK/wrk/floor-$r.out")"
    fi
  done
  log "  run $r: saturation $(tail -n 1 "$WORK/nothing-due.jsonl")"
  [ "$RATE" = 0 ] || log "  run $r: paced $(tail -n 1 "$WORK/paced.jsonl")"
done
history_lengths >"$WORK/history-2.txt"
RSS=()
for p in "${REPLICA_PIDS[@]}"; do RSS+=("$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status")"); done

# 4. Baseline: one process per request.
log "baseline: $BASELINE x ociup resolve, $CLIENTS at once"
export OCIUP BASELINE CLIENTS NICKS
BASELINE_JSON=null
[ "$BASELINE" = 0 ] || BASELINE_JSON=$(python3 - <<'EOF'
import concurrent.futures, os, statistics, subprocess, time
ociup, n, c, nicks = os.environ["OCIUP"], int(os.environ["BASELINE"]), int(os.environ["CLIENTS"]), int(os.environ["NICKS"])
def one(i):
    t = time.monotonic()
    p = subprocess.run([ociup, "resolve", f"n{(i * 37) % nicks}", "--json"], capture_output=True)
    return time.monotonic() - t, p.returncode
t0 = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(c) as ex:
    rs = list(ex.map(one, range(n)))
wall = time.monotonic() - t0
lat = sorted(r[0] for r in rs)
import json
print(json.dumps({"requests": n, "failed": sum(1 for r in rs if r[1] != 0), "wall_s": round(wall, 3),
                  "per_s": round(n / wall, 1), "p50_ms": round(statistics.median(lat) * 1000, 1),
                  "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 1)}))
EOF
)
log "baseline: $BASELINE_JSON"

export RATE FRESH_WITHIN WORK RUNS NICKS BASES MOVED REQUESTS CLIENTS MAX_REGEN JSON_OUT UPGRADE UPGRADE_WALL UPGRADE_SERVED
export UPGRADES BASELINE_JSON RSS_KIB="${RSS[*]}" MACHINE="$(bench_machine)" REV="$(bench_git_rev)"
export SECONDS_PER_RUN OCIUP_VERSION="$("$OCIUP" --version)"
mkdir -p "$(dirname "$JSON_OUT")"
python3 - <<'EOF'
import json, os, statistics, sys
W = os.environ["WORK"]
E = os.environ
nicks, bases, moved = int(E["NICKS"]), int(E["BASES"]), int(E["MOVED"])
bad = []
for f in ("history-1.txt", "history-2.txt"):
    for line in open(f"{W}/{f}"):
        nick, n = line.split()
        k = int(nick[1:])
        want = 2 if k % bases < moved else 1
        if int(n) != want:
            bad.append(f"{f}: {nick} has {n} versions, not {want}")
upgrade = json.loads(E["UPGRADE"])
due = [json.loads(l) for l in open(f"{W}/nothing-due.jsonl")]
floor = [json.loads(l) for l in open(f"{W}/floor.jsonl")]
base = json.loads(E["BASELINE_JSON"])
paced = [json.loads(l) for l in open(f"{W}/paced.jsonl")]
failures = (upgrade["non_200"] + upgrade["errors"] + sum(d["non_200"] + d["errors"] for d in due + paced)
            + (base["failed"] if base else 0))
if upgrade["answered"] != int(E["REQUESTS"]):
    bad.append(f"pass 1: wrk counted {upgrade['answered']} answers, not {E['REQUESTS']}")
med = lambda xs: statistics.median(xs)
rps = [d["requests"] / d["duration_s"] for d in due]
p50 = med([d["p50_ms"] for d in due]); p99 = med([d["p99_ms"] for d in due])
reg_per = med([d["registry_requests"] / d["requests"] for d in due])
# CPU of both replicas per answer, in microseconds (what one answer costs the service).
cpu_us = med([d["replica_cpu_s"] * 1e6 / max(d["requests"], 1) for d in due])
floor_rps = [f["requests"] / f["duration_s"] for f in floor]
per_resolve = floor[0]["per_resolve"]
floor_resolves = med(floor_rps) / per_resolve
rss = [int(x) / 1024 for x in E["RSS_KIB"].split()]
moved_nicks = sum(1 for k in range(nicks) if k % bases < moved)
out = {
    "machine": E["MACHINE"], "commit": E["REV"], "ociup": E["OCIUP_VERSION"],
    "nicks": nicks, "bases": bases, "moved_bases": moved, "moved_nicks": moved_nicks,
    "clients": int(E["CLIENTS"]), "max_regenerations": int(E["MAX_REGEN"]),
    "fresh_within_ms": E["FRESH_WITHIN"] or None,
    "upgrade_pass": {**upgrade, "served_by_replicas": int(E["UPGRADE_SERVED"]), "wall_s": float(E["UPGRADE_WALL"]),
                     "upgrades_counted_per_replica": [int(x) for x in E["UPGRADES"].split()]},
    "nothing_due": {"runs": due, "median_per_s": round(med(rps), 1), "median_p50_ms": p50, "median_p99_ms": p99,
                    "registry_requests_per_answer": round(reg_per, 3), "replica_cpu_us_per_answer": round(cpu_us, 1), "seconds_per_run": int(E["SECONDS_PER_RUN"])},
    "floor": {"runs": floor, "requests_per_resolve": per_resolve, "median_registry_requests_per_s": round(med(floor_rps), 1),
              "median_resolves_per_s": round(floor_resolves, 1), "median_p50_ms": med([f["p50_ms"] for f in floor]),
              "median_p99_ms": med([f["p99_ms"] for f in floor])},
    "paced": None if not paced else {
        "clients": int(E["CLIENTS"]), "offered_per_s": int(E["RATE"]), "runs": paced,
        "median_achieved_per_s": round(med([p["requests"] / p["duration_s"] for p in paced]), 1),
        "median_p50_ms": med([p["p50_ms"] for p in paced]), "median_p99_ms": med([p["p99_ms"] for p in paced]),
        "registry_requests_per_answer": round(med([p["registry_requests"] / max(p["requests"], 1) for p in paced]), 3),
        "replica_cpu_us_per_answer": round(med([p["replica_cpu_s"] * 1e6 / max(p["requests"], 1) for p in paced]), 1)},
    "baseline_process_per_request": base,
    "peak_rss_mib": [round(x, 1) for x in rss],
    "failures": failures, "version_errors": bad,
}
pc = out["paced"]
targets = {
    "nothing-due median < 20 ms (saturated)": p50 < 20, "nothing-due p99 < 200 ms (saturated)": p99 < 200,
    ">= 1000 resolves/s nothing due (saturated)": med(rps) >= 1000, "< 100 MiB per replica": max(rss) < 100,
    "every moved nick upgraded exactly once": not bad, "no request failed": failures == 0,
}
if pc:
    targets.update({
        f"nothing-due median < 20 ms (paced at {pc['offered_per_s']}/s)": pc["median_p50_ms"] < 20,
        f"nothing-due p99 < 200 ms (paced at {pc['offered_per_s']}/s)": pc["median_p99_ms"] < 200,
        "paced run achieved >= 1000 resolves/s": pc["median_achieved_per_s"] >= 1000,
    })
out["targets"] = targets
json.dump(out, open(E["JSON_OUT"], "w"), indent=2)
print(f"ociup serve, 2 replicas, --fresh-within {E['FRESH_WITHIN'] or '(not given)'} ({out['machine']}; {out['ociup']}, {out['commit']})")
u = out["upgrade_pass"]
print(f"  upgrade pass: {u['answered']} answers ({u['served_by_replicas']} served), {u['non_200']} non-200, {u['errors']} errors, "
      f"{u['wall_s']} s, p50 {u['p50_ms']:.1f} ms, p99 {u['p99_ms']:.1f} ms; upgrades counted {u['upgrades_counted_per_replica']} for {moved_nicks} moved nicks")
print(f"  nothing due, saturation (wrk -c{E['CLIENTS']}, closed loop; median of {len(due)} x {E['SECONDS_PER_RUN']} s): {med(rps):.0f} resolves/s, "
      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, {reg_per:.3f} registry requests and {cpu_us:.0f} us of replica CPU per answer; load {due[0]['load']} .. {due[-1]['load']}")
if pc:
    print(f"  nothing due, paced ({pc['clients']} clients, {pc['offered_per_s']}/s offered; median of {len(paced)} x {E['SECONDS_PER_RUN']} s): "
          f"{pc['median_achieved_per_s']:.0f} resolves/s achieved, p50 {pc['median_p50_ms']:.2f} ms, p99 {pc['median_p99_ms']:.2f} ms, "
          f"{pc['registry_requests_per_answer']:.3f} registry requests and {pc['replica_cpu_us_per_answer']:.0f} us of replica CPU per answer; load {paced[0]['load']} .. {paced[-1]['load']}")
print(f"  floor: registry {med(floor_rps):.0f} requests/s for the {per_resolve} requests of a resolve = {floor_resolves:.0f} resolves/s "
      f"(service / floor: {med(rps) / floor_resolves:.2f})")
if base:
    print(f"  baseline (process per request, {base['requests']} requests): {base['per_s']} /s, p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms "
          f"(service / baseline throughput: {med(rps) / base['per_s']:.1f}x)")
print(f"  peak RSS per replica: {', '.join(f'{x:.1f} MiB' for x in rss)}")
for k, v in targets.items():
    print(f"  target {k}: {'met' if v else 'MISSED'}")
for b in bad:
    print(f"  ERROR {b}")
sys.exit(1 if bad or failures else 0)
EOF
