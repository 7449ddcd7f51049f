#!/usr/bin/env bash
# Copy floor benchmark: how fast can ANY client move the copy-throughput image between a layout
# and the real registry (CNCF Distribution, `docker-registry serve`) on this machine? Times, in
# the same rounds and against the same fresh registry, skopeo, ociup, plain curl doing only the
# HTTP transfers, and the disk alone, so that `skopeo time / floor time` bounds the ratio over
# skopeo any client could reach here (floors: see the report section at the end).
#
#   bash benches/copy-floor.sh            # from the repository root (or from anywhere)
#
# Series (each round: a fresh registry on a new port; pushes first, each to a fresh repository,
# then pulls of the image ociup pushed; the order within each direction rotates every round):
#   push  skopeo      skopeo copy --preserve-digests oci:IMAGE:v1 docker://H/bench/skopeo-R:v1
#   push  crane       crane push IMAGE H/bench/crane-R:v1
#   push  ociup       ociup copy oci:IMAGE:v1 H/bench/ociup-R:v1
#   push  curl        per blob: POST /blobs/uploads/ then one monolithic PUT ?digest= of the file
#                     (curl -T, streamed), BENCH_JOBS blobs in flight (xargs -P); then the manifest
#   push  sendfile    a zero-copy client (one python3 process, BENCH_JOBS threads, one keep-alive
#                     connection each): per blob POST /blobs/uploads/, then one raw HTTP/1.1 PUT
#                     ?digest= with Content-Length whose body goes by sendfile(2) from the layout's
#                     file (socket.sendfile), no hashing, no copy through user space, largest
#                     blob first; then the manifest: what ANY client could do here (as crane
#                     does with an os.File)
#   pull  skopeo      skopeo copy docker://H/bench/ociup-R:v1 oci:FRESH:v1
#   pull  crane       crane pull --format oci H/bench/ociup-R:v1 FRESH (no fsync)
#   pull  ociup       ociup copy H/bench/ociup-R:v1 oci:FRESH:v1
#   pull  curl-files  one `curl --parallel --parallel-max BENCH_JOBS` GETs the manifest and every
#                     blob to FRESH/blobs/sha256/<hex>: no fsync, no hashing; then `sync` is timed
#                     on its own, and "curl-files+sync" is the sum (durable, but `sync` flushes
#                     whatever else the machine has dirty too)
#   pull  curl-null   the same GETs to /dev/null (network + registry only)
#   pull  curl-fsync  per blob `curl -o FRESH/blobs/sha256/<hex> URL && sync THAT-FILE` (coreutils
#                     sync FILE = fsync), BENCH_JOBS at once (xargs -P): durable per file like
#                     ociup and skopeo (both fsync every blob); each blob's fsync waits for its
#                     whole download, so this overlaps less than a client could
#   pull  disk        no network: `cp` of every blob from the (cached) source layout to FRESH and
#                     `sync FILE`, BENCH_JOBS at once: what the disk alone takes
#   (with OCIUP_B=PATH, a second ociup binary runs as "ociup-b" in both directions: A/B tests)
#
# Per copy (`measure` of benches/lib.sh): wall time (date +%s%N), client CPU and peak RSS (GNU
# time, children included), the registry's CPU (utime + stime of its pid from /proc/PID/stat,
# before and after) and the requests it made (the registry's access log; the curl series send
# a User-Agent of their own so that lib.sh's curl marker requests are told apart). Everything is
# checked (pushed manifests served with the image's digest, pulled blobs hash to their names)
# outside the timed part. Settings (environment variables, all optional):
#   BENCH_RUNS=5          rounds
#   BENCH_IMAGE=mixed     the copy-throughput.sh image: "mixed" (20 layers) or "large" (one layer)
#   BENCH_PUSH_SERIES="skopeo crane ociup curl sendfile"   push series (the floor: the faster of
#                         curl and sendfile, round by round)
#   BENCH_PULL_SERIES="skopeo crane ociup curl-files curl-null curl-fsync disk"   pull series
#                         (crane, curl-null and disk: the floor); without skopeo its ratios and
#                         floor are left out, and skopeo need not be installed
#   BENCH_JOBS=4          blobs in flight for curl (4 = ociup's default --jobs; ociup gets
#                         --jobs only when this is set)
#   BENCH_WORKDIR=DIR     work directory (default: a temp dir, removed at exit); the image (the
#                         "mixed" one: 20 layers, 1 KB to 50 MB) is made by `BENCH_IMAGES=mixed
#                         BENCH_IMAGE_ONLY=1 benches/copy-throughput.sh` in it (BENCH_SEED) and
#                         reused when there
#   BENCH_JSON=PATH       JSON summary (default benches/results/copy-floor.json)
#   OCIUP=PATH            ociup binary (default: builds target/release/ociup with cargo)
#   OCIUP_B=PATH          optional second ociup binary, series "ociup-b"
#   CRANE=PATH            crane binary (default: crane on PATH or in ~/.local/bin; see
#                         ../shared/peers/install.sh)
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
ROOT=$PWD

. "$ROOT/benches/lib.sh"

RUNS=${BENCH_RUNS:-5}
JOBS_SET=${BENCH_JOBS:-}
JOBS=${BENCH_JOBS:-4}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/copy-floor.json}
TAG=v1

IMAGE_NAME=${BENCH_IMAGE:-mixed}
PUSH_SERIES=(${BENCH_PUSH_SERIES:-skopeo crane ociup curl sendfile})
PULL_SERIES=(${BENCH_PULL_SERIES:-skopeo crane ociup curl-files curl-null curl-fsync disk})
HAVE_SKOPEO=0
[[ " ${PUSH_SERIES[*]} ${PULL_SERIES[*]} " != *" skopeo "* ]] || HAVE_SKOPEO=1
bench_need python3 docker-registry curl sha256sum xargs
[ "$HAVE_SKOPEO" = 0 ] || bench_need skopeo
CRANE=${CRANE:-$(command -v crane || echo "$HOME/.local/bin/crane")}
[ -x "$CRANE" ] || die "no crane at $CRANE (bash ../shared/peers/install.sh)"
curl --help all 2>/dev/null | grep -q -- --parallel-max || die "curl >= 7.66 (--parallel) is required"

bench_ociup
[ -z "${OCIUP_B:-}" ] || [ -x "$OCIUP_B" ] || die "no ociup binary at $OCIUP_B"
JOBS_ARGS=()
[ -z "$JOBS_SET" ] || JOBS_ARGS=(--jobs "$JOBS_SET")

bench_workdir ociup-copy-floor

# --- the image: one of those copy-throughput.sh uses ------------------------------------------
OCIUP="$OCIUP" BENCH_WORKDIR="$WORK" BENCH_IMAGES=$IMAGE_NAME BENCH_IMAGE_ONLY=1 \
  bash "$ROOT/benches/copy-throughput.sh"
case $IMAGE_NAME in
  mixed) IMAGE=$WORK/image ;;
  *) IMAGE=$WORK/image-$IMAGE_NAME ;;
esac
IMAGE_INFO=$(cat "$IMAGE.json")
jq_py() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$1)" "$IMAGE_INFO"; }
IMAGE_DIGEST=$(jq_py '["digest"]')
BLOB_BYTES=$(jq_py '["blob_bytes"]')
BLOB_DIGESTS=$(jq_py '["blob_digests"]' | tr -d "[]',")
MANIFEST_FILE=$IMAGE/blobs/sha256/${IMAGE_DIGEST#sha256:}
MANIFEST_TYPE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mediaType"])' \
  "$MANIFEST_FILE")
cat "$IMAGE"/blobs/sha256/* >/dev/null # page cache

# --- registry: start_registry of benches/lib.sh, one per round on a port not used before (it
# stops the previous round's; the loop removes that one's storage) ----------------------------

# --- the curl clients ------------------------------------------------------------------------
# curl_push_blob HOST REPO DIGEST FILE: POST an upload, PUT the whole file to it with ?digest=.
FLOOR_UA=bench-floor-curl
curl_push_blob() {
  local host=$1 repo=$2 digest=$3 file=$4 loc sep
  loc=$(curl -A "$FLOOR_UA" -fsS -X POST -D - -o /dev/null "http://$host/v2/$repo/blobs/uploads/" \
    | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
  [ -n "$loc" ] || { echo "no Location for $digest" >&2; return 1; }
  case $loc in /*) loc=http://$host$loc ;; esac
  sep='?'
  case $loc in *\?*) sep='&' ;; esac
  curl -A "$FLOOR_UA" -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -T "$file" "$loc${sep}digest=$digest"
}
export -f curl_push_blob

# curl_push HOST REPO: every blob, $JOBS at once, then the manifest.
curl_push() {
  local host=$1 repo=$2 d
  for d in $BLOB_DIGESTS; do
    printf '%s %s %s %s\n' "$host" "$repo" "$d" "$IMAGE/blobs/sha256/${d#sha256:}"
  done | xargs -P "$JOBS" -n 4 bash -c 'curl_push_blob "$@"' _
  curl -A "$FLOOR_UA" -fsS -o /dev/null -X PUT -H "Content-Type: $MANIFEST_TYPE" --data-binary "@$MANIFEST_FILE" \
    "http://$host/v2/$repo/manifests/$TAG"
}

# curl_pull HOST REPO DIR|-: the manifest, then every blob with one parallel curl, to
# DIR/blobs/sha256/ (a layout, no index.json) or to /dev/null with "-".
curl_pull() {
  local host=$1 repo=$2 out=$3 d args=()
  if [ "$out" = - ]; then
    curl -A "$FLOOR_UA" -fsS -o /dev/null "http://$host/v2/$repo/manifests/$TAG" -H "Accept: $MANIFEST_TYPE"
    for d in $BLOB_DIGESTS; do args+=(-o /dev/null "http://$host/v2/$repo/blobs/$d"); done
  else
    mkdir -p "$out/blobs/sha256"
    curl -A "$FLOOR_UA" -fsS -o "$out/blobs/sha256/${IMAGE_DIGEST#sha256:}" -H "Accept: $MANIFEST_TYPE" \
      "http://$host/v2/$repo/manifests/$TAG"
    for d in $BLOB_DIGESTS; do
      args+=(-o "$out/blobs/sha256/${d#sha256:}" "http://$host/v2/$repo/blobs/$d")
    done
  fi
  curl -A "$FLOOR_UA" -fsS --parallel --parallel-max "$JOBS" "${args[@]}"
}
# curl_fsync_one URL FILE / cp_fsync_one SRC FILE: one blob, then fsync it.
curl_fsync_one() { curl -A "$FLOOR_UA" -fsS -o "$2" "$1" && sync "$2"; }
cp_fsync_one() { cp "$1" "$2" && sync "$2"; }
export -f curl_fsync_one cp_fsync_one

# each_blob_fsync curl|cp HOST REPO DIR: every blob and the manifest to DIR/blobs/sha256, each
# fsynced as soon as it is written, $JOBS at once.
each_blob_fsync() {
  local how=$1 host=$2 repo=$3 out=$4 d
  mkdir -p "$out/blobs/sha256"
  curl -A "$FLOOR_UA" -fsS -o "$out/blobs/sha256/${IMAGE_DIGEST#sha256:}" -H "Accept: $MANIFEST_TYPE" \
    "http://$host/v2/$repo/manifests/$TAG"
  sync "$out/blobs/sha256/${IMAGE_DIGEST#sha256:}"
  for d in $BLOB_DIGESTS; do
    if [ "$how" = curl ]; then
      printf '%s %s\n' "http://$host/v2/$repo/blobs/$d" "$out/blobs/sha256/${d#sha256:}"
    else
      printf '%s %s\n' "$IMAGE/blobs/sha256/${d#sha256:}" "$out/blobs/sha256/${d#sha256:}"
    fi
  done | xargs -P "$JOBS" -n 2 bash -c "${how}_fsync_one \"\$@\"" _
}
export -f curl_pull curl_push each_blob_fsync

# The sendfile client: $PYTHON SENDFILE_PUSH HOST REPO (the image from the exported variables).
# The interpreter itself, not a shim on PATH (a pyenv shim forks ~40 processes, 0.2-0.4 s).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
SENDFILE_PUSH=$WORK/sendfile-push.py
cat >"$SENDFILE_PUSH" <<'PY'
import http.client, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

host, repo = sys.argv[1], sys.argv[2]
env = os.environ
ua = "bench-floor-sendfile"
local = threading.local()


def conn():
    if getattr(local, "c", None) is None:
        local.c = http.client.HTTPConnection(host, timeout=120)
    return local.c


def answer(c, want, what):
    r = c.getresponse()
    body = r.read()
    if r.status != want:
        sys.exit(f"{what}: {r.status} {body[:300]!r}")
    return r


def push(digest):
    c = conn()
    c.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"User-Agent": ua, "Content-Length": "0"})
    loc = answer(c, 202, f"POST for {digest}").getheader("Location")
    u = urlsplit(loc)
    path = (u.path or "/") + ("?" + u.query + "&" if u.query else "?") + "digest=" + digest
    with open(os.path.join(env["IMAGE"], "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        c.putrequest("PUT", path, skip_accept_encoding=True)
        for k, v in (("User-Agent", ua), ("Content-Type", "application/octet-stream"),
                     ("Content-Length", str(size))):
            c.putheader(k, v)
        c.endheaders()
        sent = c.sock.sendfile(f)
        if sent != size:
            sys.exit(f"sendfile sent {sent} of {size} bytes of {digest}")
    answer(c, 201, f"PUT of {digest}")


# Largest first, so that the longest upload does not start last and go alone.
blobs = sorted(env["BLOB_DIGESTS"].split(), key=lambda d: -os.path.getsize(
    os.path.join(env["IMAGE"], "blobs", "sha256", d.split(":", 1)[1])))
with ThreadPoolExecutor(int(env["JOBS"])) as pool:
    list(pool.map(push, blobs))
c = conn()
c.request("PUT", f"/v2/{repo}/manifests/{env['TAG']}", body=open(env["MANIFEST_FILE"], "rb").read(),
          headers={"User-Agent": ua, "Content-Type": env["MANIFEST_TYPE"]})
answer(c, 201, "manifest PUT")
PY
export BLOB_DIGESTS IMAGE IMAGE_DIGEST MANIFEST_FILE MANIFEST_TYPE TAG JOBS FLOOR_UA

# --- measuring ---------------------------------------------------------------------------------
SAMPLES=$WORK/floor-samples.tsv # round direction series wall_s user sys rss_kib reg_ticks requests
: >"$SAMPLES"
rm -rf "$WORK/requests" "$WORK/out"

# floor_measure ROUND DIRECTION SERIES CMD...: CMD through lib.sh's `measure` (sync before it,
# untimed; its requests from the access log), one sample appended.
floor_measure() {
  local round=$1 dir=$2 series=$3 res wall rss user sys ticks reqs
  shift 3
  res=$(measure "$dir-$series-$round" "$@")
  read -r wall rss user sys ticks <<<"$res"
  reqs=$(wc -l <"$WORK/requests/$dir-$series-$round.log")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$dir" "$series" "$wall" "$user" "$sys" \
    "$rss" "$ticks" "$reqs" >>"$SAMPLES"
  log "  round $round $(printf '%-5s %-16s' "$dir" "$series") ${wall}s" \
    "$(awk -v b="$BLOB_BYTES" -v w="$wall" 'BEGIN { printf "%6.1f MB/s", b / w / 1e6 }')" \
    "client cpu $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }') s," \
    "registry cpu $ticks ticks, $((rss / 1024)) MiB, $reqs requests"
}

manifest_sha() {
  local repo=${1%:*} tag=${1##*:}
  echo "sha256:$(curl -fsS -H "Accept: $MANIFEST_TYPE" "http://${repo%%/*}/v2/${repo#*/}/manifests/$tag" \
    | sha256sum | cut -d' ' -f1)"
}
# check_blobs DIR: every file under DIR/blobs/sha256 hashes to its name, and the image's are there.
check_blobs() {
  local d=$1/blobs/sha256 f n=0
  for f in "$d"/*; do
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$(basename "$f")" ] || die "$f does not hash to its name"
    n=$((n + 1))
  done
  for f in $BLOB_DIGESTS "$IMAGE_DIGEST"; do
    [ -f "$d/${f#sha256:}" ] || die "$d lacks $f"
  done
}

if [ -n "${OCIUP_B:-}" ]; then
  PUSH_SERIES+=(ociup-b)
  PULL_SERIES+=(ociup-b)
fi

log "timing $RUNS rounds: push ${PUSH_SERIES[*]}; pull ${PULL_SERIES[*]} ($JOBS blobs in flight for curl)"
for ((round = 1; round <= RUNS; round++)); do
  stop_registry
  [ "$round" -eq 1 ] || rm -rf "$WORK/floor-$((round - 1))"
  start_registry "floor-$round"
  bench_rotate "$((round - 1))" "${PUSH_SERIES[@]}"
  for s in "${ORDER[@]}"; do
    repo=bench/$s-$round
    case $s in
      skopeo) floor_measure "$round" push "$s" skopeo copy --quiet --preserve-digests \
        --dest-tls-verify=false "oci:$IMAGE:$TAG" "docker://$REG_HOST/$repo:$TAG" ;;
      crane) floor_measure "$round" push "$s" "$CRANE" push --insecure "$IMAGE" "$REG_HOST/$repo:$TAG" ;;
      ociup) floor_measure "$round" push "$s" "$OCIUP" copy --insecure-registry "$REG_HOST" \
        "${JOBS_ARGS[@]}" "oci:$IMAGE:$TAG" "$REG_HOST/$repo:$TAG" ;;
      ociup-b) floor_measure "$round" push "$s" "$OCIUP_B" copy --insecure-registry "$REG_HOST" \
        "${JOBS_ARGS[@]}" "oci:$IMAGE:$TAG" "$REG_HOST/$repo:$TAG" ;;
      curl) floor_measure "$round" push "$s" bash -c 'curl_push "$@"' _ "$REG_HOST" "$repo" ;;
      sendfile) floor_measure "$round" push "$s" "$PYTHON" "$SENDFILE_PUSH" "$REG_HOST" "$repo" ;;
    esac
    [ "$(manifest_sha "$REG_HOST/$repo:$TAG")" = "$IMAGE_DIGEST" ] || die "push $s: wrong digest served"
  done
  src=bench/ociup-$round
  bench_rotate "$((round - 1))" "${PULL_SERIES[@]}"
  for s in "${ORDER[@]}"; do
    out=$WORK/floor-pull-$s
    rm -rf "$out"
    case $s in
      skopeo) floor_measure "$round" pull "$s" skopeo copy --quiet --preserve-digests \
        --src-tls-verify=false "docker://$REG_HOST/$src:$TAG" "oci:$out:$TAG" ;;
      crane) floor_measure "$round" pull "$s" "$CRANE" pull --insecure --format oci \
        "$REG_HOST/$src:$TAG" "$out" ;;
      ociup) floor_measure "$round" pull "$s" "$OCIUP" copy --insecure-registry "$REG_HOST" \
        "${JOBS_ARGS[@]}" "$REG_HOST/$src:$TAG" "oci:$out:$TAG" ;;
      ociup-b) floor_measure "$round" pull "$s" "$OCIUP_B" copy --insecure-registry "$REG_HOST" \
        "${JOBS_ARGS[@]}" "$REG_HOST/$src:$TAG" "oci:$out:$TAG" ;;
      curl-files)
        floor_measure "$round" pull "$s" bash -c 'curl_pull "$@"' _ "$REG_HOST" "$src" "$out"
        # The write-back of what curl left dirty, timed on its own (measure syncs first,
        # so the registry's own dirty pages are not in it).
        t0=$(date +%s%N)
        sync
        t1=$(date +%s%N)
        printf '%s\tpull\tsync-after-curl\t%s\t0\t0\t0\t0\t0\n' "$round" \
          "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')" >>"$SAMPLES"
        ;;
      curl-null) floor_measure "$round" pull "$s" bash -c 'curl_pull "$@"' _ "$REG_HOST" "$src" - ;;
      curl-fsync) floor_measure "$round" pull "$s" bash -c 'each_blob_fsync "$@"' _ curl "$REG_HOST" \
        "$src" "$out" ;;
      disk) floor_measure "$round" pull "$s" bash -c 'each_blob_fsync "$@"' _ cp "$REG_HOST" "$src" "$out" ;;
    esac
    [ "$s" = curl-null ] || check_blobs "$out"
    rm -rf "$out"
  done
done
stop_registry
rm -rf "$WORK/floor-$RUNS"

# --- report ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
export SAMPLES JSON_OUT RUNS JOBS BLOB_BYTES IMAGE_INFO NPROC=$(nproc) CPU="${CPU:-unknown}"
export CLK_TCK=$(getconf CLK_TCK) MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
export VERSIONS="crane $("$CRANE" version 2>/dev/null || echo -), $(skopeo --version 2>/dev/null || echo no skopeo), $(docker-registry --version | awk '{ print $2, $3 }'), $(curl --version | head -n 1 | awk '{ print $1, $2 }')"
export OCIUP OCIUP_B="${OCIUP_B:-}" LOAD_END="$(bench_load)"
python3 - <<'PY'
import collections, json, os, statistics as st, time

env = os.environ
blob_bytes = int(env["BLOB_BYTES"])
tck = int(env["CLK_TCK"])
nproc = int(env["NPROC"])
rows = []
for line in open(env["SAMPLES"]).read().splitlines():
    rnd, d, s, wall, user, sys_, rss, ticks, reqs = line.split("\t")
    rows.append({"round": int(rnd), "direction": d, "series": s, "wall_s": float(wall),
                 "client_cpu_s": round(float(user) + float(sys_), 2), "peak_rss_kib": int(rss),
                 "registry_cpu_s": int(ticks) / tck, "requests": int(reqs)})
# curl-files+sync: the durable variant, per round.
by = collections.defaultdict(dict)
for r in rows:
    by[(r["round"], r["direction"])][r["series"]] = r
for (rnd, d), m in sorted(by.items()):
    if "curl-files" in m and "sync-after-curl" in m:
        f = dict(m["curl-files"])
        f["series"] = "curl-files+sync"
        f["wall_s"] = round(f["wall_s"] + m["sync-after-curl"]["wall_s"], 3)
        rows.append(f)

summary = {}
for d in ("push", "pull"):
    for s in sorted({r["series"] for r in rows if r["direction"] == d}):
        rs = [r for r in rows if r["direction"] == d and r["series"] == s]
        w = st.median(r["wall_s"] for r in rs)
        summary[f"{d}/{s}"] = {
            "runs": len(rs), "wall_s": [r["wall_s"] for r in rs], "wall_s_median": w,
            "wall_s_min": min(r["wall_s"] for r in rs), "wall_s_max": max(r["wall_s"] for r in rs),
            "mb_per_s_median": blob_bytes / w / 1e6 if w else None,
            "client_cpu_s_median": st.median(r["client_cpu_s"] for r in rs),
            "registry_cpu_s_median": st.median(r["registry_cpu_s"] for r in rs),
            "peak_rss_mib_median": st.median(r["peak_rss_kib"] for r in rs) / 1024,
            "peak_rss_mib_max": max(r["peak_rss_kib"] for r in rs) / 1024,
            "requests_median": st.median(r["requests"] for r in rs),
        }

print()
print(f"machine: {nproc} cores, {env['CPU']}, {int(env['MEM_KIB']) / 1048576:.1f} GiB RAM, "
      f"load at the end {env['LOAD_END']}  |  {env['VERSIONS']}")
print(f"image: {blob_bytes} blob bytes ({blob_bytes / 1e6:.1f} MB); {env['RUNS']} rounds, "
      f"{env['JOBS']} blobs in flight for curl; ociup {env['OCIUP']}"
      + (f", ociup-b {env['OCIUP_B']}" if env["OCIUP_B"] else ""))
print()
hdr = (f"{'direction':<6} {'series':<17} {'wall s':>7} {'(min-max)':>13} {'MB/s':>7} "
       f"{'client cpu s':>12} {'registry cpu s':>14} {'RSS MiB':>8} {'max':>6} {'reqs':>5}")
print("medians:")
print(hdr)
print("-" * len(hdr))
for k, t in summary.items():
    d, s = k.split("/")
    print(f"{d:<6} {s:<17} {t['wall_s_median']:7.2f} "
          f"{'(' + format(t['wall_s_min'], '.2f') + '-' + format(t['wall_s_max'], '.2f') + ')':>13} "
          f"{t['mb_per_s_median'] or 0:7.1f} {t['client_cpu_s_median']:12.2f} "
          f"{t['registry_cpu_s_median']:14.2f} {t['peak_rss_mib_median']:8.1f} "
          f"{t['peak_rss_mib_max']:6.1f} {t['requests_median']:5g}")

print()
peers = [p for p in ("crane", "skopeo") if f"push/{p}" in summary or f"pull/{p}" in summary]
print("ratios over " + " and over ".join(peers) + " (peer median wall / series median wall; > 1 is faster):")
ratios, ratios_crane = {}, {}
for d in ("push", "pull"):
    sk = summary.get(f"{d}/skopeo", {}).get("wall_s_median")
    cr = summary.get(f"{d}/crane", {}).get("wall_s_median")
    for k, t in summary.items():
        if k.startswith(d + "/") and not k.endswith(("/skopeo", "/sync-after-curl", "/disk")):
            line = f"  {k:<24}"
            if cr:
                ratios_crane[k] = cr / t["wall_s_median"]
                line += f" {ratios_crane[k]:5.2f}x crane"
            if sk:
                ratios[k] = sk / t["wall_s_median"]
                line += f" {ratios[k]:5.2f}x skopeo"
            print(line)
# Floors. A floor is a wall time no client can beat here; the best ratio over a peer any client
# could reach is the peer's wall over the floor, taken per round (the machine's speed drifts
# between rounds; the peer and the floor series run seconds apart) and then the median.
#   push: the registry hashes and stores every byte, whoever sends it. Measured floor: the
#         faster of plain curl (monolithic PUTs) and the sendfile client (zero-copy PUTs, no
#         hashing), round by round. Hard bound (an estimate): that push's registry CPU over all
#         cores, as if the client cost nothing and the registry used every core; but not under
#         the largest blob's share of it by bytes, which the registry spends on one goroutine
#         (one request body read, hashed and written in turn), so that no core count shortens
#         it; and never over the measured floor (the share also counts fixed per-request work).
#   pull: a durable copy needs the bytes off the registry AND onto the disk. Measured floor:
#         max(curl-null, disk), each resource alone, as if they overlapped perfectly (a plain
#         curl + fsync per blob does not overlap them and is slower than that). crane writes
#         without any fsync: its wall can be under this floor.
per_round = collections.defaultdict(dict)
sizes = [os.path.getsize(os.path.join(env["IMAGE"], "blobs", "sha256", d.split(":", 1)[1]))
         for d in json.loads(env["IMAGE_INFO"])["blob_digests"]]
largest_share = max(sizes) / sum(sizes)
for r in rows:
    per_round[(r["direction"], r["round"])][r["series"]] = r


def floor_of(d, m):
    if d == "push":
        # The faster of the plain clients this round (curl, sendfile).
        got = [m[k] for k in ("curl", "sendfile") if k in m]
        if not got:
            return None
        best = min(got, key=lambda r: r["wall_s"])
        cpu = best["registry_cpu_s"]
        hard = min(best["wall_s"], max(cpu / nproc, cpu * largest_share))
        return {"measured": best["wall_s"], "hard": hard, "client": best["series"]}
    if "curl-null" not in m or "disk" not in m:
        return None
    f = max(m["curl-null"]["wall_s"], m["disk"]["wall_s"])
    return {"measured": f, "hard": f}


print()
print("floors (what no client can beat here; ratio = peer wall / floor, median of the rounds):")
conclusion = {}
targets = {"crane": 1.1, "skopeo": 1.5}
for d in ("push", "pull"):
    rr = [(rnd, m) for (dd, rnd), m in sorted(per_round.items()) if dd == d]
    fl = [floor_of(d, m) for _, m in rr]
    if not rr or any(f is None for f in fl):
        continue
    how = ("the faster of the curl and sendfile pushes" if d == "push" else "max(curl-null, disk)")
    hard_how = (f"its registry CPU / cores, at least the largest blob's {largest_share:.0%} of it"
                if d == "push" else "same")
    c = {"floor_wall_s_median": st.median(f["measured"] for f in fl),
         "hard_bound_wall_s_median": st.median(f["hard"] for f in fl)}
    print(f"  {d}: floor {how} {c['floor_wall_s_median']:.3f} s; hard bound ({hard_how}) "
          f"{c['hard_bound_wall_s_median']:.3f} s")
    for k in ("ociup", "ociup-b"):
        if k in rr[0][1]:
            over = st.median(m[k]["wall_s"] / f["measured"] for (_, m), f in zip(rr, fl))
            c[f"{k}_wall_over_floor"] = over
            print(f"    {k}: {over:.2f}x the floor's wall time (1.00 = at the floor)")
    for peer in peers:
        if peer not in rr[0][1]:
            continue
        pw = [m[peer]["wall_s"] for _, m in rr]
        best = st.median(p / f["measured"] for p, f in zip(pw, fl))
        hard = st.median(p / f["hard"] for p, f in zip(pw, fl))
        got = {k: st.median(p / m[k]["wall_s"] for p, (_, m) in zip(pw, rr))
               for k in ("ociup", "ociup-b") if k in rr[0][1]}
        want = targets[peer] if not (peer == "skopeo" and d == "pull") else None
        c[peer] = {"max_ratio_measured_floor": best, "max_ratio_hard_bound": hard,
                   "ociup_ratio_per_round_median": got, "target": want,
                   "target_reachable": None if want is None else max(best, hard) >= want,
                   "target_reached_by_a_floor_client": None if want is None else best >= want}
        clients = sorted({f.get("client") for f in fl if f.get("client")})
        if want is None:
            verdict = ""
        elif best >= want:
            verdict = (f"  => {want}x REACHABLE: a plain client ({'/'.join(clients)}) reaches it "
                       f"here (the sendfile client does no hashing, which ociup must)"
                       if d == "push" else f"  => {want}x REACHABLE")
        elif hard >= want:
            verdict = (f"  => {want}x reached by no plain client here; only the hard bound (a "
                       f"client costing nothing) leaves room for it")
        else:
            verdict = f"  => {want}x NOT reachable on this machine"
        print(f"    over {peer}: at most {best:.2f}x (measured floor), {hard:.2f}x (hard bound); "
              + ", ".join(f"{k} reaches {v:.2f}x" for k, v in got.items()) + verdict)
    conclusion[d] = c
if "pull/curl-files" in summary and "pull/crane" in summary:
    cr = summary["pull/crane"]["wall_s_median"]
    print("  pull, for reference (crane's median wall over each): "
          + "; ".join(f"{k} {cr / summary['pull/' + k]['wall_s_median']:.2f}x"
                      for k in ("curl-files", "curl-files+sync", "curl-fsync", "curl-null")
                      if "pull/" + k in summary))

out = {"benchmark": "copy-floor", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "machine": {"nproc": nproc, "cpu": env["CPU"],
                   "mem_gib": round(int(env["MEM_KIB"]) / 1048576, 1)},
       "versions": env["VERSIONS"], "runs": int(env["RUNS"]), "jobs": int(env["JOBS"]),
       "image": json.loads(env["IMAGE_INFO"]), "summary": summary,
       "ratios_over_skopeo": ratios, "ratios_over_crane": ratios_crane, "floor": conclusion,
       "load_end": env["LOAD_END"], "samples": rows}
with open(env["JSON_OUT"], "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
PY
