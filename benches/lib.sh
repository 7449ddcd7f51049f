# Shell functions the benchmark scripts share. Source it after `set -euo pipefail`, from the
# repository root (the scripts `cd` there first):
#
#   . benches/lib.sh
#   bench_need python3 curl docker-registry
#   bench_ociup                 # OCIUP: the binary under test (built unless OCIUP is set)
#   bench_workdir ociup-push    # WORK: BENCH_WORKDIR, or a temp dir removed at exit
#   start_registry reg-1        # REG_DIR, REG_HOST, REG_PID; a fresh Distribution on a new port
#   measure ID CMD...           # prints "wall_s rss_kib user_s sys_s registry_ticks"
#   bench_rotate 3 a b c        # ORDER=(a b c) rotated by 3: tools interleaved run by run
#   bench_machine               # one line: cores, CPU, memory, load
#
# Only 127.0.0.1 is used. Everything here reports on stderr and leaves stdout to the caller.

# Loopback only: a proxy set in the environment must not see (or break) the registry requests.
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

log() { printf '%s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# bench_need TOOL...: every tool on PATH, and GNU time at /usr/bin/time.
bench_need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
  done
  [ -x /usr/bin/time ] || die "GNU time is required at /usr/bin/time (apt-get install -y time)"
  /usr/bin/time -f %M true 2>/dev/null || die "/usr/bin/time is not GNU time"
}

# bench_ociup: sets OCIUP to the binary under test: $OCIUP when set, else target/release/ociup
# built with cargo (a no-op when up to date).
bench_ociup() {
  if [ -z "${OCIUP:-}" ]; then
    log "building ociup (release)"
    cargo build --release --quiet -p ociup-cli
    OCIUP=$PWD/target/release/ociup
  fi
  [ -x "$OCIUP" ] || die "no ociup binary at $OCIUP"
}

# bench_workdir NAME: sets WORK to $BENCH_WORKDIR (kept) or a new temp dir (removed at exit), and
# installs the exit trap that also stops the registry.
REG_PID=
bench_workdir() {
  if [ -n "${BENCH_WORKDIR:-}" ]; then
    WORK=$BENCH_WORKDIR
    KEEP_WORK=1
    mkdir -p "$WORK"
  else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    KEEP_WORK=0
  fi
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM # run the EXIT trap on Ctrl-C too
}

bench_cleanup() {
  stop_registry
  if [ "${KEEP_WORK:-1}" = 0 ]; then rm -rf "$WORK"; fi
}

# free_port: sets PORT to a free 127.0.0.1 port this run has not used yet (skopeo's blob-info
# cache is keyed by host:port). Not for $(...): it updates USED_PORTS.
USED_PORTS=" "
free_port() {
  while :; do
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    case $USED_PORTS in *" $PORT "*) ;; *) USED_PORTS+="$PORT " && return ;; esac
  done
}

# start_registry NAME: a fresh Distribution (`docker-registry serve`) with its own storage,
# config and logs under $WORK/NAME, on a new port; sets REG_DIR, REG_HOST, REG_PID. The access log
# (Apache combined format) goes to $REG_DIR/access.log. Stops the one running before, if any.
start_registry() {
  stop_registry
  REG_DIR=$WORK/$1
  rm -rf "$REG_DIR" && mkdir -p "$REG_DIR/data"
  free_port
  REG_HOST=127.0.0.1:$PORT
  cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REG_HOST
EOF
  docker-registry serve "$REG_DIR/config.yml" >"$REG_DIR/access.log" 2>"$REG_DIR/registry.log" &
  REG_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    if curl -fsS -o /dev/null "http://$REG_HOST/v2/" 2>/dev/null; then return 0; fi
    kill -0 "$REG_PID" 2>/dev/null || die "the registry exited: $(tail -n 5 "$REG_DIR/registry.log")"
    sleep 0.1
  done
  die "the registry on $REG_HOST did not come up: $(tail -n 5 "$REG_DIR/registry.log")"
}

# stop_registry: stops the registry start_registry started, by its pid.
stop_registry() {
  if [ -n "${REG_PID:-}" ]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=
  fi
}

reg_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$REG_PID/stat"; }

# measure ID CMD...: runs CMD (stdout to $WORK/out/ID.out, stderr to ID.err) under GNU time, with
# `sync` before it, untimed. Wall time is date +%s%N around it (GNU time's own has 10 ms
# resolution); peak RSS and client CPU come from GNU time, the registry's CPU from its /proc stat.
# The access-log lines CMD caused go to $WORK/requests/ID.log, cut at a marker request sent after
# CMD exits (a request is logged as its handler returns, so all of CMD's are logged before).
# Prints "wall_s rss_kib user_s sys_s registry_ticks". Runs in $(...): sets nothing.
measure() {
  local id=$1 before t0 t1 n0 n1 i
  shift
  mkdir -p "$WORK/out" "$WORK/requests"
  sync
  before=$(wc -l <"$REG_DIR/access.log")
  t0=$(reg_cpu_ticks)
  n0=$(date +%s%N)
  /usr/bin/time -f '%M %U %S' -o "$WORK/out/$id.time" "$@" >"$WORK/out/$id.out" 2>"$WORK/out/$id.err" \
    || die "$id failed: $* ($(tail -n 5 "$WORK/out/$id.err"))"
  n1=$(date +%s%N)
  curl -fsS -o /dev/null "http://$REG_HOST/v2/?bench-mark=$id"
  for ((i = 0; i < 100; i++)); do
    grep -q "bench-mark=$id " "$REG_DIR/access.log" && break
    sleep 0.05
  done
  t1=$(reg_cpu_ticks)
  tail -n "+$((before + 1))" "$REG_DIR/access.log" | sed "/bench-mark=$id /,\$d" \
    | grep -v '"curl/' >"$WORK/requests/$id.log" || true
  echo "$(awk -v a="$n0" -v b="$n1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') $(tail -n 1 "$WORK/out/$id.time") $((t1 - t0))"
}

# bench_rotate N ITEM...: sets ORDER to the items starting at index N mod count, so that over the
# runs every tool goes first, second, ... equally often (machine noise spreads over all).
bench_rotate() {
  local n=$1
  shift
  local items=("$@") k=$#
  ORDER=()
  local i
  for ((i = 0; i < k; i++)); do ORDER+=("${items[$(((n + i) % k))]}"); done
}

# bench_median NUMBER...: the median (mean of the middle two for an even count).
bench_median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_load: the load averages now (1, 5, 15 min) from /proc/loadavg.
bench_load() { cut -d' ' -f1-3 /proc/loadavg; }

# bench_machine: one line naming cores, CPU model, memory and the load now.
bench_machine() {
  local cpu mem
  cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
  mem=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
  echo "$(nproc) cores, ${cpu:-unknown CPU}, $mem GiB RAM, load $(bench_load)"
}

# bench_git_rev: the short commit of the tree, "-dirty" when tracked files changed (read-only:
# never takes the index lock of a checkout someone is working in).
bench_git_rev() {
  local rev
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git --no-optional-locks status --porcelain -uno 2>/dev/null || true)" ]; then
    rev+="-dirty"
  fi
  echo "$rev"
}
