#!/usr/bin/env bash
# Rebase benchmark: what `ociup rebase` costs against a real registry (CNCF Distribution), and
# that the cost does not depend on how big the base layers are.
#
#   bash benches/rebase.sh            # from the repository root (or from anywhere)
#
# For every base size (default 10 MB and 1 GB in all, 3 layers each) the script starts a registry
# of its own on a free 127.0.0.1 port (filesystem storage in a temp dir), pushes two bases
# lib/base:v1 and lib/base:v2 (3 layers of seeded, incompressible data each, no layer shared) and
# an image team/app:v1 with 2 small layers of its own on v1, then times
#
#   ociup rebase HOST/team/app:v1 --old-base HOST/lib/base:v1 --new-base HOST/lib/base:v2 \
#         --to HOST/team/app:<fresh tag> --insecure-registry HOST --json [--source-date-epoch E]
#
# BENCH_RUNS times per series and size. Each round runs every series once against every size
# (round 1 in the listed order, main first; later rounds rotate the order), so machine noise
# spreads over sizes and series alike. The series:
#   main     a distinct --source-date-epoch per run, so every run writes a new config blob. Run 1
#            is the cold run (the v2 layers are not in team/app yet: they get mounted); runs 2..N
#            find them present. The headline numbers are this series' medians over all N runs.
#   same     no --source-date-epoch: the config is identical every run, so from run 2 on only
#            the manifest is new.
#   nocache  like main, but each run with an empty cache of its own (XDG_CACHE_HOME): the
#            image's and both bases' configs are read from the registry every time (main and
#            same read them in their first run only: ociup keeps configs by digest in
#            $XDG_CACHE_HOME/ociup/blobs, here this script's own). What the client learnt of the
#            registry (XDG_DATA_HOME) and the layers mounted by main's first run are kept, as for
#            main: this is main without the cache, not a first rebase on a new machine.
#   nocerts  (diagnostic) like main, but with SSL_CERT_FILE/SSL_CERT_DIR naming an empty file
#            and directory, so the client setup loads no system root certificates: the
#            difference to main is what loading the roots costs (plain HTTP needs none).
#   version  (diagnostic) `ociup --version`: the floor of starting the process at all.
#   main-b   (only with OCIUP_B=PATH) main with a second binary, for an A/B test of a change in
#            the same rounds: its own tags and epochs, the ratio main / main-b reported.
#   crane    the peer: `crane rebase --insecure HOST/team/app:v1 --old_base HOST/lib/base:v1
#            --new_base HOST/lib/base:v2 --tag HOST/team/app:crane-R`, interleaved with the
#            others; its medians give the ratio ociup main / crane (skipped when no crane is
#            found: CRANE=PATH, else crane on PATH or in ~/.local/bin).
#
# Per run: wall time (bash's $EPOCHREALTIME around the command: no fork of date), the HTTP
# requests the registry logged (its access log, sliced by marker requests sent with curl just
# before and after the run), blob uploads among them (POST/PATCH/PUT on /blobs/uploads/, mount
# POSTs counted apart), the blob actions ociup reports in --json (present / mounted / copied;
# copied bytes are layer bytes that moved), and, from the registry's own log, each request's
# server time: hence when the first request reached the registry after the process started,
# the time spent inside requests, and the idle gaps between them. The CPU time other processes
# used during the timed rounds is reported too (/proc/stat against this script's own and its
# registries'), as a noise warning.
#
# Targets (reported as met or MISSED, never failing the script): at most 10 HTTP requests per
# rebase (median; the cold run, which also mounts the 3 new base layers, one POST each, is shown
# beside it), zero layer bytes sent, median wall time under 15 ms and at most 0.45x crane's (main; nocache beside it), and
# a cost independent of the layer sizes (same requests; wall-time medians within 0.8x-1.25x of each other). The exit
# status is non-zero only if setup fails, a main/same rebase fails, or a result is wrong (its
# layers are not v2's layers followed by the image's own).
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=20                  runs per series
#   BENCH_SIZES="10M 1G"           total base sizes (3 layers each); decimal K/M/G suffixes
#   BENCH_SEED=20240601            seed of the layer data
#   BENCH_BASE_COMPRESSION=none    compression of the base layers (none|gzip|zstd): their bytes
#                                  are incompressible and rebase never reads them; none keeps
#                                  the 1 GB setup fast
#   BENCH_DIAG=1                   also run the nocerts and version series (0: skip them)
#   BENCH_JSON=PATH                JSON summary (default benches/results/rebase.json)
#   BENCH_WORKDIR=DIR              work directory, kept at exit (default: a temp dir, removed);
#                                  the registries' storage (about 2x the base size each) is
#                                  removed once the results are in, unless BENCH_KEEP=1
#   BENCH_REGISTRY=docker-registry registry binary (Distribution 2.x: `serve CONFIG.yml`)
#   OCIUP_B=PATH                   a second ociup binary, timed as series main-b (A/B test)
#   OCIUP=PATH                     ociup binary (default: builds target/release/ociup); it is
#                                  copied into the work dir first, so a concurrent cargo build
#                                  cannot swap it mid-run
#
# Needs bash 5, curl, openssl, python3, sha256sum and the registry binary. Only 127.0.0.1 is
# contacted. About 1.5-2 minutes with the defaults (most of it writing the 1 GB bases; 2 GB of
# disk at the peak).
set -euo pipefail
shopt -s inherit_errexit # a failing command inside $(...) stops the script too
export LC_ALL=C          # '.' as the decimal point of $EPOCHREALTIME
# Loopback only: never through a proxy, and no ambient SOURCE_DATE_EPOCH changing the configs.
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
unset SOURCE_DATE_EPOCH HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy

cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=${BENCH_RUNS:-20}
SIZES=${BENCH_SIZES:-10M 1G}
SEED=${BENCH_SEED:-20240601}
COMPRESSION=${BENCH_BASE_COMPRESSION:-none}
DIAG=${BENCH_DIAG:-1}
KEEP=${BENCH_KEEP:-0}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/rebase.json}
REGISTRY=${BENCH_REGISTRY:-docker-registry}
EPOCH=1700000000 # --source-date-epoch of main run R is EPOCH+R; nocerts EPOCH+100000+R; main-b +200000; nocache +300000

# log, die, bench_ociup, bench_machine, bench_load from the shared library. The registries stay
# this script's own: one per size, all running at once (lib.sh's start_registry keeps one).
. "$ROOT/benches/lib.sh"
CRANE=${CRANE:-$(command -v crane || echo "$HOME/.local/bin/crane")}
[ -x "$CRANE" ] || CRANE=

# --- prerequisites ---------------------------------------------------------------------------
[ "${BASH_VERSINFO[0]}" -ge 5 ] || die "bash 5 is required (for \$EPOCHREALTIME)"
for tool in curl openssl python3 sha256sum "$REGISTRY"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[ "$RUNS" -ge 2 ] || die "BENCH_RUNS must be at least 2 (run 1 is the cold run)"

# --- work directory, binary, cleanup ---------------------------------------------------------
if [ -n "${BENCH_WORKDIR:-}" ]; then
  WORK=$BENCH_WORKDIR
  mkdir -p "$WORK"
  WORK=$(cd "$WORK" && pwd)
  REMOVE_WORK=0
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ociup-rebase-bench.XXXXXX")
  REMOVE_WORK=1
fi
# ociup's data directory of this run: what the registry client learns of the registries (which
# check a manifest's blobs, which blobs a repository holds) starts empty, is learnt by the
# setup's pushes and kept from run to run, as for a user running rebase again and again.
rm -rf "$WORK/data"
export XDG_DATA_HOME=$WORK/data
# Its cache: the configs it has read, by digest (never the user's ~/.cache), kept from run to
# run likewise; the nocache series gives each run an empty one.
rm -rf "$WORK/cache"
export XDG_CACHE_HOME=$WORK/cache

REG_PIDS=() # every registry this script started (one per size)
# stop_registry PID: stops one registry this script started, by its pid.
stop_registry() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${REG_PIDS[@]}"; do stop_registry "$pid"; done
  if [ "$REMOVE_WORK" = 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT trap on ^C too

bench_ociup
mkdir -p "$WORK/bin"
cp "$OCIUP" "$WORK/bin/ociup" # a snapshot: others may rebuild target/release meanwhile
OCIUP_SRC=$OCIUP
OCIUP=$WORK/bin/ociup
OCIUP_B_SRC=${OCIUP_B:-}
if [ -n "$OCIUP_B_SRC" ]; then
  [ -x "$OCIUP_B_SRC" ] || die "no ociup binary at OCIUP_B=$OCIUP_B_SRC"
  cp "$OCIUP_B_SRC" "$WORK/bin/ociup-b"
  OCIUP_B=$WORK/bin/ociup-b
fi

# An empty root store for the nocerts series.
mkdir -p "$WORK/no-certs"
: >"$WORK/no-certs.pem"

# --- helpers -----------------------------------------------------------------------------------

# bytes SIZE: "10M" -> 10000000 (decimal units).
bytes() {
  python3 -c '
import sys
s = sys.argv[1].strip().upper()
m = {"K": 10**3, "M": 10**6, "G": 10**9}
print(int(float(s[:-1]) * m[s[-1]]) if s[-1] in m else int(s))' "$1"
}

# gen_file NAME BYTES OUT: BYTES of AES-128-CTR keystream, keyed by sha256(SEED/NAME): seeded,
# incompressible, the same everywhere, and fast (GB/s), so a 1 GB base costs seconds.
gen_file() {
  local key
  key=$(printf '%s/%s' "$SEED" "$1" | sha256sum | cut -c1-32)
  # openssl dies of SIGPIPE when head has enough: not an error.
  (openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000 \
    -in /dev/zero 2>/dev/null || true) | head -c "$2" >"$3"
}

free_port() {
  python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# start_registry DIR: a fresh Distribution registry with storage in DIR/storage, the access log
# (stdout: one Apache-style line per request) in DIR/access.log and its own log (stderr: one
# "response completed" line per request, with the server time) in DIR/registry.log.
start_registry() {
  local dir=$1 attempt port i
  for attempt in 1 2 3; do
    port=$(free_port)
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: ociup-bench
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
    "$REGISTRY" serve "$dir/config.yml" >"$dir/access.log" 2>"$dir/registry.log" &
    REG_PID=$!
    REG_PIDS+=("$REG_PID")
    for ((i = 0; i < 200; i++)); do
      if ! kill -0 "$REG_PID" 2>/dev/null; then break; fi
      if curl -sf -o /dev/null "http://127.0.0.1:$port/v2/"; then
        HOST=127.0.0.1:$port
        return 0
      fi
      sleep 0.05
    done
    log "registry did not come up on port $port (attempt $attempt):"
    tail -n 5 "$dir/registry.log" >&2 || true
    stop_registry "$REG_PID"
  done
  die "cannot start $REGISTRY"
}

# marker ID: a request the registry logs with user agent "bench-marker ID"; waits until it is in
# the access log, so the lines between a run's begin and end markers are exactly its requests.
marker() {
  local i
  curl -s -o /dev/null -A "bench-marker $1" "http://$HOST/v2/" || die "marker request failed"
  for ((i = 0; i < 400; i++)); do
    grep -qF "\"bench-marker $1\"" "$ACCESS" && return 0
    sleep 0.005
  done
  die "marker $1 never reached the access log"
}

# run_one SERIES R: one timed run; appends a line to $RUNS_TSV.
run_one() {
  local series=$1 r=$2 id="$LABEL/$1/$2" tag out rc t0 t1
  local args=(rebase "$HOST/team/app:v1" --old-base "$HOST/lib/base:v1"
    --new-base "$HOST/lib/base:v2" --insecure-registry "$HOST" --json)
  out=$SIZE_DIR/runs/$series-$r
  case $series in
  main)
    tag=rebased-$r
    args+=(--source-date-epoch $((EPOCH + r)))
    ;;
  same) tag=same-$r ;;
  nocerts)
    tag=nocerts-$r
    args+=(--source-date-epoch $((EPOCH + 100000 + r)))
    ;;
  main-b)
    tag=main-b-$r
    args+=(--source-date-epoch $((EPOCH + 200000 + r)))
    ;;
  nocache)
    tag=nocache-$r
    args+=(--source-date-epoch $((EPOCH + 300000 + r)))
    mkdir -p "$SIZE_DIR/nocache-$r"
    ;;
  version) tag=- ;;
  crane) tag=crane-$r ;;
  esac
  [ "$tag" = - ] || args+=(--to "$HOST/team/app:$tag")
  [ "$series" != crane ] || args=(rebase --insecure "$HOST/team/app:v1" --old_base "$HOST/lib/base:v1"
    --new_base "$HOST/lib/base:v2" --tag "$HOST/team/app:$tag")

  [ "$series" = version ] || marker "$id/begin"
  set +e
  case $series in
  version)
    t0=$EPOCHREALTIME
    "$OCIUP" --version >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  crane)
    t0=$EPOCHREALTIME
    "$CRANE" "${args[@]}" >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  main-b)
    t0=$EPOCHREALTIME
    "$OCIUP_B" "${args[@]}" >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  nocache)
    t0=$EPOCHREALTIME
    XDG_CACHE_HOME=$SIZE_DIR/nocache-$r "$OCIUP" "${args[@]}" >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  nocerts)
    t0=$EPOCHREALTIME
    SSL_CERT_FILE=$WORK/no-certs.pem SSL_CERT_DIR=$WORK/no-certs "$OCIUP" "${args[@]}" \
      >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  *)
    t0=$EPOCHREALTIME
    "$OCIUP" "${args[@]}" >"$out.json" 2>"$out.err"
    rc=$?
    t1=$EPOCHREALTIME
    ;;
  esac
  set -e
  [ "$series" = version ] || marker "$id/end"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$series" "$r" "$t0" "$t1" "$rc" "$tag" "$out" >>"$RUNS_TSV"
  if [ "$rc" != 0 ]; then
    log "  $id: exit status $rc: $(head -c 300 "$out.err")"
  fi
}

# cpu_snapshot: "busy own total" in clock ticks: all CPUs' busy time (/proc/stat), the time of
# this shell and its waited-for children (ociup, curl, ...) plus the registries', and all time.
# Their differences over the timed rounds tell how much of the machine other processes used.
cpu_snapshot() {
  python3 - "$$" "${REG_PIDS[@]}" <<'PY'
import sys
v = list(map(int, open("/proc/stat").readline().split()[1:9]))
total, busy = sum(v), sum(v) - v[3] - v[4]  # minus idle and iowait
def ticks(pid, fields):
    try:
        s = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(s[i]) for i in fields)
own = ticks(sys.argv[1], (11, 12, 13, 14))  # utime stime cutime cstime
own += sum(ticks(p, (11, 12)) for p in sys.argv[2:])
print(busy, own, total)
PY
}

# use_size LABEL: point the helpers at one size's registry and files.
declare -A HOST_OF SETUP_S_OF STORAGE_OF PID_OF
use_size() {
  LABEL=$1
  SIZE_DIR=$WORK/$LABEL
  HOST=${HOST_OF[$LABEL]}
  ACCESS=$SIZE_DIR/access.log
  RUNS_TSV=$SIZE_DIR/runs.tsv
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$EPOCHREALTIME
read -ra SIZE_LIST <<<"$SIZES"

# --- setup: one registry per size, with both bases and the image -------------------------------
for LABEL in "${SIZE_LIST[@]}"; do
  TOTAL=$(bytes "$LABEL")
  PER_LAYER=$((TOTAL / 3))
  SIZE_DIR=$WORK/$LABEL
  rm -rf "$SIZE_DIR"
  mkdir -p "$SIZE_DIR/runs" "$SIZE_DIR/src"
  : >"$SIZE_DIR/runs.tsv"

  log "== base size $LABEL ($TOTAL bytes, 3 layers of $PER_LAYER bytes)"
  start_registry "$SIZE_DIR"
  HOST_OF[$LABEL]=$HOST
  PID_OF[$LABEL]=$REG_PID
  log "registry $REGISTRY on $HOST (pid $REG_PID), storage $SIZE_DIR/storage"
  t_setup=$EPOCHREALTIME

  # Two bases with 3 layers each, built as layouts (one `append` per layer), then copied over.
  for v in v1 v2; do
    prev=scratch
    for i in 1 2 3; do
      mkdir -p "$SIZE_DIR/src/$v/l$i"
      gen_file "$v/l$i" "$PER_LAYER" "$SIZE_DIR/src/$v/l$i/data.bin"
      "$OCIUP" append --base "$prev" --platform linux/amd64 \
        --add "$SIZE_DIR/src/$v/l$i:/data/$v/l$i" --compression "$COMPRESSION" \
        --to "oci:$SIZE_DIR/layout-$v:l$i" >/dev/null
      prev=oci:$SIZE_DIR/layout-$v:l$i
      rm -rf "$SIZE_DIR/src/$v/l$i" # keep disk use down: the layout holds the layer now
    done
    "$OCIUP" copy "$prev" "$HOST/lib/base:$v" --insecure-registry "$HOST" >/dev/null
    rm -rf "$SIZE_DIR/layout-$v"
    log "  pushed $HOST/lib/base:$v"
  done

  # The custom image: 2 small layers of its own on v1, each its own `append` in the registry.
  # The second append's base is team/app:v1 itself, so the image records that as its base:
  # hence the explicit --old-base above.
  mkdir -p "$SIZE_DIR/own"
  gen_file own/f1 4096 "$SIZE_DIR/own/f1"
  gen_file own/f2 4096 "$SIZE_DIR/own/f2"
  "$OCIUP" append --base "$HOST/lib/base:v1" --add "$SIZE_DIR/own/f1:/app/f1" \
    --to "$HOST/team/app:v1" --insecure-registry "$HOST" >/dev/null
  "$OCIUP" append --base "$HOST/team/app:v1" --add "$SIZE_DIR/own/f2:/app/f2" \
    --to "$HOST/team/app:v1" --insecure-registry "$HOST" >/dev/null
  log "  pushed $HOST/team/app:v1 (2 own layers on lib/base:v1)"
  SETUP_S_OF[$LABEL]=$(python3 -c "print(round($EPOCHREALTIME - $t_setup, 2))")
  STORAGE_OF[$LABEL]=$(du -sb "$SIZE_DIR/storage" | cut -f1)
done
sync # the bases' write-back must not overlap the timed runs

# --- timed rounds --------------------------------------------------------------------------------
# Every round runs each series once against each size, so machine noise spreads over all of them
# alike. Round 1 keeps the listed order (main first: its run 1 is the cold run of that size);
# later rounds rotate the starting size and series.
SERIES=(main same nocache)
[ -z "$CRANE" ] || SERIES+=(crane)
[ -z "$OCIUP_B_SRC" ] || SERIES+=(main-b)
if [ "$DIAG" = 1 ]; then SERIES+=(nocerts version); fi
log "timing $RUNS rounds of: ${SERIES[*]} x ${SIZE_LIST[*]}"
nsz=${#SIZE_LIST[@]}
nse=${#SERIES[@]}
CPU_BEFORE=$(cpu_snapshot)
for ((r = 1; r <= RUNS; r++)); do
  for ((j = 0; j < nsz; j++)); do
    if [ "$r" = 1 ]; then use_size "${SIZE_LIST[j]}"; else use_size "${SIZE_LIST[(r + j) % nsz]}"; fi
    for ((k = 0; k < nse; k++)); do
      if [ "$r" = 1 ]; then s=${SERIES[k]}; else s=${SERIES[(r + k) % nse]}; fi
      run_one "$s" "$r"
    done
  done
  if ((r % 5 == 0)); then log "  round $r/$RUNS done"; fi
done
CPU_AFTER=$(cpu_snapshot)

# --- per size: slice the logs, check the results, summarise (the registry is still up) ---------
SIZE_JSONS=()
for LABEL in "${SIZE_LIST[@]}"; do
  use_size "$LABEL"
  TOTAL=$(bytes "$LABEL")
  PER_LAYER=$((TOTAL / 3))
  SETUP_S=${SETUP_S_OF[$LABEL]}
  STORAGE_BYTES=${STORAGE_OF[$LABEL]}
  LABEL=$LABEL TOTAL=$TOTAL PER_LAYER=$PER_LAYER HOST=$HOST SIZE_DIR=$SIZE_DIR \
    SETUP_S=$SETUP_S STORAGE_BYTES=$STORAGE_BYTES python3 - <<'PY'
import calendar, collections, json, os, re, statistics as st, urllib.request

env = os.environ
label, host, d = env["LABEL"], env["HOST"], env["SIZE_DIR"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
])

def get(path, accept=ACCEPT):
    req = urllib.request.Request(f"http://{host}{path}", headers={"Accept": accept,
                                 "User-Agent": "bench-analysis"})
    with opener.open(req) as r:
        return r.read()

def manifest(repo, ref):
    import hashlib
    raw = get(f"/v2/{repo}/manifests/{ref}")
    return json.loads(raw), "sha256:" + hashlib.sha256(raw).hexdigest()

# Names for every digest, so request lines read "HEAD /v2/team/app/blobs/<v2.L1>".
labels = {}
m1, d1 = manifest("lib/base", "v1")
m2, d2 = manifest("lib/base", "v2")
ma, da = manifest("team/app", "v1")
for name, m, md in (("v1", m1, d1), ("v2", m2, d2), ("app", ma, da)):
    labels[md] = f"manifest {name}"
    labels[m["config"]["digest"]] = f"config {name}"
for i, l in enumerate(m1["layers"], 1):
    labels[l["digest"]] = f"v1.L{i}"
for i, l in enumerate(m2["layers"], 1):
    labels[l["digest"]] = f"v2.L{i}"
own = ma["layers"][len(m1["layers"]):]
for i, l in enumerate(own, 1):
    labels[l["digest"]] = f"own.L{i}"
assert [l["digest"] for l in ma["layers"][:len(m1["layers"])]] == \
       [l["digest"] for l in m1["layers"]], "team/app:v1 is not built on lib/base:v1"
expected_layers = [l["digest"] for l in m2["layers"]] + [l["digest"] for l in own]

# --- the runs and their slices of both logs
runs = []
for line in open(os.path.join(d, "runs.tsv")):
    series, r, t0, t1, rc, tag, out = line.rstrip("\n").split("\t")
    runs.append({"series": series, "run": int(r), "t0": float(t0), "t1": float(t1),
                 "rc": int(rc), "tag": tag, "out": out})

ACC = re.compile(r'^(\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')
access = [m for m in (ACC.match(l) for l in open(os.path.join(d, "access.log"))) if m]
KV = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)')
reglog = []
seen_ids = set()
for l in open(os.path.join(d, "registry.log")):
    if "response completed" not in l:
        continue
    f = {k: v[1:-1] if v.startswith('"') else v for k, v in KV.findall(l)}
    # An answer with several errors (a manifest naming several unknown blobs) is logged once
    # per error, under one request id: count the request once.
    rid = f.get("http.request.id")
    if rid is not None:
        if rid in seen_ids:
            continue
        seen_ids.add(rid)
    reglog.append(f)

def dur_ms(s):
    for unit, k in (("ns", 1e-6), ("µs", 1e-3), ("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            try:
                return float(s[: -len(unit)]) * k
            except ValueError:
                pass
    # composite Go durations (1m2.5s) never happen here
    raise ValueError(s)

def epoch(ts):  # 2026-11-23T10:31:54.111805254Z
    base, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(tuple(map(int, re.split(r"[-T:]", base))) + (0, 0, 0)) + \
        float("0." + (frac or "0"))

def between(rows, ua_of, run_id):
    b = e = None
    for i, row in enumerate(rows):
        ua = ua_of(row)
        if ua == f"bench-marker {run_id}/begin":
            b = i
        elif ua == f"bench-marker {run_id}/end":
            e = i
    assert b is not None and e is not None, run_id
    return [row for row in rows[b + 1:e] if not ua_of(row).startswith("bench-")]

DIG = re.compile(r"sha256(?::|%3A)([0-9a-f]{64})")
def name(path):
    path = re.sub(r"_state=[^&\s]+", "_state=...", path)
    path = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", path)
    return DIG.sub(lambda m: "<" + labels.get("sha256:" + m.group(1),
                                              "sha256:" + m.group(1)[:12]) + ">", path)

# The results first (their config and manifest digests get names too), then the runs.
failures, results = [], {}
for run in runs:
    if run["series"] == "version" or run["rc"] != 0:
        continue
    rm, rd = manifest("team/app", run["tag"])
    labels.setdefault(rm["config"]["digest"], "config new")
    labels.setdefault(rd, "manifest new")
    results[run["tag"]] = (rm, rd)

for run in runs:
    run["wall_ms"] = (run["t1"] - run["t0"]) * 1e3
    if run["series"] == "version":
        continue
    rid = f"{label}/{run['series']}/{run['run']}"
    acc = between(access, lambda m: m.group(7), rid)
    reg = between(reglog, lambda f: f.get("http.request.useragent", ""), rid)
    run["requests"] = len(acc)
    reqs = [(m.group(3), m.group(4), int(m.group(5))) for m in acc]
    run["uploads"] = sum(1 for meth, p, _ in reqs if "/blobs/uploads/" in p and
                         meth in ("POST", "PATCH", "PUT") and "mount=" not in p)
    run["upload_puts"] = sum(1 for meth, p, _ in reqs if meth == "PUT" and "/blobs/uploads/" in p)
    run["patches"] = sum(1 for meth, _, _ in reqs if meth == "PATCH")
    run["mount_posts"] = sum(1 for meth, p, _ in reqs if meth == "POST" and "mount=" in p)
    run["by_method"] = dict(collections.Counter(meth for meth, _, _ in reqs))
    # The registry's own view: when each request started and ended, on the same clock as t0.
    spans = []
    for f in reg:
        end = epoch(f["time"])
        spans.append((end - dur_ms(f["http.response.duration"]) / 1e3, end, f))
    spans.sort(key=lambda s: s[0])
    run["registry_lines"] = len(reg)
    run["connections"] = len({f.get("http.request.remoteaddr") for _, _, f in spans})
    if spans:
        first, last = spans[0][0], max(e for _, e, _ in spans)
        run["to_first_request_ms"] = (first - run["t0"]) * 1e3
        run["after_last_response_ms"] = (run["t1"] - last) * 1e3
        run["request_span_ms"] = (last - first) * 1e3
        run["server_ms_sum"] = sum(dur_ms(f["http.response.duration"]) for _, _, f in spans)
        # Idle time inside the span: no request in flight at the registry (client-side work,
        # or a second client being set up).
        idle, reach, gaps = 0.0, first, []
        for s, e, f in spans:
            if s > reach:
                idle += s - reach
                gaps.append(((s - reach) * 1e3, f["http.request.method"] + " " +
                             name(f["http.request.uri"])))
            reach = max(reach, e)
        run["idle_in_span_ms"] = idle * 1e3
        run["largest_gap"] = max(gaps, default=(0.0, ""))
    run["request_list"] = [
        {"method": f["http.request.method"], "path": name(f["http.request.uri"]),
         "status": int(f["http.response.status"]),
         "server_ms": round(dur_ms(f["http.response.duration"]), 2),
         "start_ms": round((s - run["t0"]) * 1e3, 2),
         "conn": f.get("http.request.remoteaddr", "")}
        for s, _, f in spans]
    # What ociup says it did with each blob.
    try:
        out = json.load(open(run["out"] + ".json"))
    except (OSError, ValueError):
        out = {}
    run["written"] = out.get("written")
    acts = collections.Counter(b["action"] for b in out.get("blobs", []))
    run["blob_actions"] = dict(acts)
    run["copied_bytes"] = sum(b["size"] for b in out.get("blobs", []) if b["action"] == "copied")
    # The result: v2's layers then the image's own, and the config bytes that were uploaded.
    if run["tag"] in results:
        rm, rd = results[run["tag"]]
        run["config_bytes"] = rm["config"]["size"]
        # crane prints no JSON: only its result's layers are checked.
        run["result_ok"] = [l["digest"] for l in rm["layers"]] == expected_layers \
            and (run["series"] == "crane" or rd == out.get("digest"))
        if not run["result_ok"]:
            failures.append(f"{rid}: result layers are not v2's followed by the image's own")
    elif run["series"] in ("main", "same", "crane", "main-b", "nocache"):
        failures.append(f"{rid}: exit status {run['rc']}")

def q(xs):
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0]
    qs = st.quantiles(xs, n=4, method="inclusive")
    return qs[0], qs[2]

def summary(rs):
    if not rs:
        return None
    w = [r["wall_ms"] for r in rs]
    s = {"runs": len(rs), "wall_ms": [round(x, 3) for x in w],
         "wall_ms_median": st.median(w), "wall_ms_min": min(w), "wall_ms_max": max(w),
         "wall_ms_p25_p75": q(w), "failed": sum(1 for r in rs if r["rc"] != 0)}
    if "requests" in rs[0]:
        reqs = [r["requests"] for r in rs]
        s.update({
            "requests": reqs, "requests_median": st.median(reqs),
            "requests_min": min(reqs), "requests_max": max(reqs),
            "blob_upload_requests_median": st.median(r["uploads"] for r in rs),
            "patch_requests_total": sum(r["patches"] for r in rs),
            "mount_posts_total": sum(r["mount_posts"] for r in rs),
            "copied_blobs_total": sum(r["blob_actions"].get("copied", 0) for r in rs),
            "copied_bytes_total": sum(r["copied_bytes"] for r in rs),
            "config_bytes_median": st.median(r.get("config_bytes", 0) for r in rs),
            "connections_median": st.median(r["connections"] for r in rs),
        })
        for k in ("to_first_request_ms", "request_span_ms", "idle_in_span_ms",
                  "after_last_response_ms", "server_ms_sum"):
            v = [r[k] for r in rs if k in r]
            if v:
                s[k + "_median"] = st.median(v)
    return s

by = collections.defaultdict(list)
for r in runs:
    by[r["series"]].append(r)
main = sorted(by["main"], key=lambda r: r["run"])
series = {k: summary(v) for k, v in by.items()}
series["main_cold"] = summary(main[:1])
series["main_warm"] = summary(main[1:])

# Requests that look redundant, per run kind.
def redundancy(run):
    lst = run["request_list"]
    found = []
    # A manifest PUT refused for its missing blobs (400) and repeated once they are there is
    # the design; the same request with the same answer twice is waste.
    c = collections.Counter((x["method"], x["path"], x["status"]) for x in lst)
    for (meth, p, st), n in c.items():
        if n > 1 and "/blobs/uploads/" not in p:
            found.append(f"{n}x {meth} {p} -> {st} (same request, same answer)")
    missing = {x["path"].rsplit("/", 1)[-1] for x in lst if x["method"] == "HEAD"
               and "/blobs/" in x["path"] and x["status"] == 404}
    for x in lst:
        m = re.search(r"mount=(<[^>]+>|sha256:\w+)", x["path"])
        if x["method"] == "POST" and m and m.group(1) in missing:
            found.append(f"HEAD {m.group(1)} (404) before POST mount of the same blob: the mount "
                         "alone answers 201 whether or not the blob was there")
    for x in lst:
        if x["method"] == "HEAD" and "<own.L" in x["path"] and "/v2/team/app/" in x["path"]:
            found.append(f"HEAD {x['path']}: an own layer, referenced by team/app:v1 in this same "
                         "repository, so present by construction")
    return found

cold, warm = main[0], main[1]
result = {
    "label": label, "total_bytes": int(env["TOTAL"]), "layer_bytes": int(env["PER_LAYER"]),
    "setup_s": float(env["SETUP_S"]), "registry_storage_bytes": int(env["STORAGE_BYTES"]),
    "host": host,
    "digests": {"base_v1": d1, "base_v2": d2, "app_v1": da,
                "v1_layers": [l["digest"] for l in m1["layers"]],
                "v2_layers": [l["digest"] for l in m2["layers"]],
                "own_layers": [l["digest"] for l in own]},
    "layer_sizes": [l["size"] for l in m2["layers"]],
    "series": series,
    "request_lists": {"cold": cold["request_list"], "warm": warm["request_list"],
                      "same_warm": sorted(by["same"], key=lambda r: r["run"])[1]["request_list"]},
    "patterns": {"cold": sorted(f"{x['method']} {x['path']} {x['status']}"
                                for x in cold["request_list"]),
                 "warm": sorted(f"{x['method']} {x['path']} {x['status']}"
                                for x in warm["request_list"])},
    "redundant": {"cold": redundancy(cold), "warm": redundancy(warm)},
    "largest_gap": {"cold": cold.get("largest_gap"), "warm": warm.get("largest_gap")},
    "runs": [{k: v for k, v in r.items() if k not in ("out",)} for r in runs],
    "failures": failures,
}
with open(os.path.join(d, "result.json"), "w") as f:
    json.dump(result, f, indent=1)
for x in failures:
    print("FAILED:", x)
PY
  SIZE_JSONS+=("$SIZE_DIR/result.json")
  stop_registry "${PID_OF[$LABEL]}"
  if [ "$KEEP" != 1 ]; then
    rm -rf "$SIZE_DIR/storage" "$SIZE_DIR/src" "$SIZE_DIR/own"
  fi
done

# --- report ------------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# (--no-optional-locks: read-only, never touches the index of a checkout someone is working in)
if [ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain -uno 2>/dev/null || true)" ]; then
  GIT_REV+="-dirty"
fi
export JSON_OUT RUNS SEED COMPRESSION GIT_REV CPU="${CPU:-unknown}" OCIUP_SRC OCIUP_B_SRC
export SIZE_JSON_LIST="${SIZE_JSONS[*]}" NPROC=$(nproc)
export MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
export LOAD_START LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg) CPU_BEFORE CPU_AFTER
export ELAPSED_S=$(python3 -c "print(round($EPOCHREALTIME - $T_START, 1))")
export REG_VERSION=$("$REGISTRY" --version 2>&1 | head -n1)
export OCIUP_VERSION=$("$OCIUP" --version 2>&1 | head -n1)
python3 - <<'PY'
import json, os, sys, time

env = os.environ
sizes = [json.load(open(p)) for p in env["SIZE_JSON_LIST"].split()]
machine = {"nproc": int(env["NPROC"]), "cpu": env["CPU"],
           "mem_gib": round(int(env["MEM_KIB"]) / 1048576, 1),
           "loadavg_start": env["LOAD_START"], "loadavg_end": env["LOAD_END"]}

print()
print(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['mem_gib']} GiB RAM, "
      f"load {machine['loadavg_start']} -> {machine['loadavg_end']}")
print(f"ociup {env['GIT_REV']} ({env['OCIUP_VERSION']}), registry: {env['REG_VERSION']}, "
      f"{env['RUNS']} runs per series, whole run {env['ELAPSED_S']} s")
b0, o0, t0 = map(int, env["CPU_BEFORE"].split())
b1, o1, t1 = map(int, env["CPU_AFTER"].split())
cpu = {"busy_pct": 100 * (b1 - b0) / (t1 - t0), "bench_pct": 100 * (o1 - o0) / (t1 - t0)}
cpu["others_pct"] = max(0.0, cpu["busy_pct"] - cpu["bench_pct"])
machine["cpu_during_timing"] = cpu
print(f"CPU during the timed rounds: {cpu['busy_pct']:.0f}% busy of {machine['nproc']} cores: "
      f"this benchmark (ociup, registries, curl) {cpu['bench_pct']:.0f}%, other processes "
      f"{cpu['others_pct']:.0f}%")
if cpu["others_pct"] > 10:
    print("note: other processes used the machine during the timed rounds: wall times are noisy")
print()

def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"

hdr = (f"{'size':>5} {'series':<16} {'runs':>4} {'wall ms':>8} {'(p25-p75)':>13} {'reqs':>5} "
       f"{'(min-max)':>9} {'uploads':>7} {'copied':>6} {'conns':>5} {'1st req':>7} "
       f"{'span':>6} {'idle':>6} {'srv sum':>7}")
print(hdr)
print("-" * len(hdr))
names = [("main", "main (all)"), ("main_cold", "  cold (run 1)"), ("main_warm", "  warm (2..N)"),
         ("same", "same config"), ("nocache", "no cache"), ("main-b", "main, OCIUP_B"),
         ("crane", "crane rebase"),
         ("nocerts", "no root certs"),
         ("version", "ociup --version")]
for s in sizes:
    for key, title in names:
        x = s["series"].get(key)
        if not x:
            continue
        p = x["wall_ms_p25_p75"]
        line = (f"{s['label']:>5} {title:<16} {x['runs']:>4} {x['wall_ms_median']:8.1f} "
                f"{'(' + fmt(p[0]) + '-' + fmt(p[1]) + ')':>13} ")
        if "requests_median" in x:
            line += (f"{x['requests_median']:5g} "
                     f"{str(x['requests_min']) + '-' + str(x['requests_max']):>9} "
                     f"{x['blob_upload_requests_median']:7g} {x['copied_blobs_total']:6d} "
                     f"{x['connections_median']:5g} "
                     f"{fmt(x.get('to_first_request_ms_median')):>7} "
                     f"{fmt(x.get('request_span_ms_median')):>6} "
                     f"{fmt(x.get('idle_in_span_ms_median')):>6} "
                     f"{fmt(x.get('server_ms_sum_median')):>7}")
        print(line)
print()
print("wall ms: process start to exit; reqs: HTTP requests in the access log; uploads: blob")
print("upload requests (POST/PATCH/PUT on /blobs/uploads/, mounts not counted); copied: blobs")
print("ociup reports as copied (layer bytes moved); conns: TCP connections; 1st req: ms from")
print("process start until the first request reached the registry; span: first request start")
print("to last response; idle: time in the span with no request in flight; srv sum: the")
print("registry's server time summed over requests (medians).")

# Request lists of one representative cold and warm run (the first size), and whether the
# other sizes did exactly the same requests.
first = sizes[0]
for kind, title in (("cold", "cold run (main run 1: the v2 layers get mounted)"),
                    ("warm", "warm run (main run 2: a new config, everything else present)")):
    lst = first["request_lists"][kind]
    print(f"\nrequests of the {first['label']} {title}: {len(lst)}")
    for x in lst:
        print(f"  +{x['start_ms']:6.1f} ms  {x['method']:<5} {x['path']:<78} {x['status']} "
              f"{x['server_ms']:5.2f} ms")
    for s in sizes[1:]:
        same = s["patterns"][kind] == first["patterns"][kind]
        print(f"  {s['label']}: {'the same requests' if same else 'DIFFERENT requests:'}")
        if not same:
            for x in s["request_lists"][kind]:
                print(f"    {x['method']:<5} {x['path']} {x['status']}")
    if first["redundant"][kind]:
        print("  looks redundant:")
        for r in first["redundant"][kind]:
            print(f"    - {r}")
    g = first["largest_gap"][kind]
    if g and g[0] > 0:
        print(f"  largest idle gap before a request: {g[0]:.1f} ms, before {g[1]}")

# Where the wall time goes (medians, first size): before the first request, inside the
# requests, after the last; and what loading the system roots costs (main vs nocerts).
for s in sizes:
    m, n = s["series"]["main"], s["series"].get("nocerts")
    v = s["series"].get("version")
    line = (f"{s['label']}: wall {m['wall_ms_median']:.1f} ms = start to 1st request "
            f"{m['to_first_request_ms_median']:.1f} + requests {m['request_span_ms_median']:.1f} "
            f"(of which idle {m['idle_in_span_ms_median']:.1f}) + after the last "
            f"{m['after_last_response_ms_median']:.1f}")
    if n:
        line += (f"; without system roots {n['wall_ms_median']:.1f} ms "
                 f"(1st request at {n['to_first_request_ms_median']:.1f})")
    if v:
        line += f"; ociup --version {v['wall_ms_median']:.1f} ms"
    print(("\n" if s is sizes[0] else "") + line)

# Size independence and targets.
main = {s["label"]: s["series"]["main"] for s in sizes}
small, big = sizes[0], sizes[-1]
ratio = big["series"]["main"]["wall_ms_median"] / small["series"]["main"]["wall_ms_median"]
req_same = all(s["patterns"] == small["patterns"] for s in sizes)
med_reqs = max(m["requests_median"] for m in main.values())
copied = sum(s["series"][k]["copied_blobs_total"] + s["series"][k]["patch_requests_total"]
             for s in sizes for k in ("main", "same", "nocache") if s["series"].get(k))
copied_bytes = sum(s["series"][k]["copied_bytes_total"] for s in sizes
                   for k in ("main", "same", "nocache") if s["series"].get(k))
wall_ok = all(m["wall_ms_median"] < 15 for m in main.values())
nocache_wall_ok = all(s["series"]["nocache"]["wall_ms_median"] < 15 for s in sizes
                      if s["series"].get("nocache"))
cold_reqs = max(m["requests"][0] for m in main.values())
crane = {s["label"]: s["series"].get("crane") for s in sizes}
crane_ratio = {l: main[l]["wall_ms_median"] / c["wall_ms_median"] for l, c in crane.items() if c}
nocache = {s["label"]: s["series"].get("nocache") for s in sizes}
nocache_ratio = {l: nocache[l]["wall_ms_median"] / c["wall_ms_median"]
                 for l, c in crane.items() if c and nocache.get(l)}
indep = req_same and 0.8 <= ratio <= 1.25
targets = [
    ("<= 10 HTTP requests per rebase (median)", med_reqs <= 10,
     ", ".join(f"{l}: median {m['requests_median']:g}, cold run {m['requests'][0]}"
               for l, m in main.items())),
    ("<= 12 HTTP requests in the cold run", cold_reqs <= 12,
     ", ".join(f"{l}: {m['requests'][0]}" for l, m in main.items())),
    ("zero layer bytes sent", copied == 0,
     f"{copied} blobs copied / PATCH requests, {copied_bytes} layer bytes; only the config "
     f"({small['series']['main']['config_bytes_median']:g} bytes) and manifest are uploaded"),
    ("median wall time < 15 ms", wall_ok and nocache_wall_ok,
     ", ".join(f"{l}: {m['wall_ms_median']:.1f} ms" for l, m in main.items())
     + "".join(f"; nocache {s['label']}: {s['series']['nocache']['wall_ms_median']:.1f} ms"
               for s in sizes if s["series"].get("nocache"))),
    ("wall time <= 0.45x crane's (medians; main: configs cached after its first run)",
     bool(crane_ratio) and
     all(r <= 0.45 for r in crane_ratio.values()),
     ", ".join(f"{l}: {r:.2f}x ({main[l]['wall_ms_median']:.1f} / {crane[l]['wall_ms_median']:.1f} "
               f"ms; crane {crane[l]['requests_median']:g} requests)" for l, r in crane_ratio.items())
     or "crane not run"),
    ("... and with no cache (every config read)", bool(nocache_ratio) and
     all(r <= 0.45 for r in nocache_ratio.values()),
     ", ".join(f"{l}: {r:.2f}x ({nocache[l]['wall_ms_median']:.1f} / "
               f"{crane[l]['wall_ms_median']:.1f} ms; {nocache[l]['requests_median']:g} requests)"
               for l, r in nocache_ratio.items()) or "crane not run"),
    ("cost independent of layer sizes", indep,
     f"wall median {big['label']}/{small['label']} = {ratio:.2f}x; requests "
     + ("identical" if req_same else "DIFFER")
     + f" ({small['total_bytes'] / 1e6:g} MB vs {big['total_bytes'] / 1e6:g} MB of base)"),
]
for s in sizes:
    b, c = s["series"].get("main-b"), s["series"].get("crane")
    if b:
        m = s["series"]["main"]
        line = (f"A/B {s['label']}: main {m['wall_ms_median']:.1f} ms ({m['requests_median']:g} requests) vs "
                f"OCIUP_B {b['wall_ms_median']:.1f} ms ({b['requests_median']:g} requests) = "
                f"{m['wall_ms_median'] / b['wall_ms_median']:.2f}x")
        if c:
            line += f"; OCIUP_B / crane {b['wall_ms_median'] / c['wall_ms_median']:.2f}x"
        print(line)
print(f"\nsize independence: wall-time median {big['label']}/{small['label']} = {ratio:.2f}x, "
      f"request-count medians " + " / ".join(f"{m['requests_median']:g}" for m in main.values())
      + f", requests {'identical' if req_same else 'DIFFERENT'} in kind")
print("targets:")
for name, ok, val in targets:
    print(f"  {'met    ' if ok else 'MISSED '} {name:<33} {val}")

failures = [f for s in sizes for f in s["failures"]]
for f in failures:
    print(f"FAILED: {f}")
summary = {
    "benchmark": "rebase",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": machine,
    "ociup_rev": env["GIT_REV"], "ociup_version": env["OCIUP_VERSION"],
    "ociup_binary": env["OCIUP_SRC"], "ociup_binary_b": env.get("OCIUP_B_SRC") or None,
    "registry": env["REG_VERSION"],
    "settings": {"runs": int(env["RUNS"]), "seed": int(env["SEED"]),
                 "base_compression": env["COMPRESSION"]},
    "elapsed_s": float(env["ELAPSED_S"]),
    "sizes": sizes,
    "wall_median_ratio": ratio,
    # main's median: run 1 reads the configs, runs 2..N find them in ociup's cache.
    "ociup_over_crane_wall": crane_ratio,
    "ociup_nocache_over_crane_wall": nocache_ratio,
    "requests_identical_across_sizes": req_same,
    "targets": {n: {"met": ok, "value": v} for n, ok, v in targets},
    "failures": failures,
}
with open(env["JSON_OUT"], "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
sys.exit(1 if failures else 0)
PY
