#!/usr/bin/env bash
# Copy throughput benchmark: `ociup copy` against `skopeo copy` between an OCI layout and a real
# registry (CNCF Distribution, `docker-registry serve`) on 127.0.0.1, both directions, on one
# generated multi-layer image (~237 MB of gzip blobs in 5 layers), plus the request count of
# every copy (from the registry's access log), the cost of a copy whose image is already there
# and of a registry-to-registry copy that can mount.
#
#   bash benches/copy-throughput.sh            # from the repository root (or from anywhere)
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=5          rounds; each round times all four copies, tool order alternating
#   BENCH_JOBS=           ociup --jobs (default: ociup's own default)
#   BENCH_JSON=PATH       JSON summary (default benches/results/copy-throughput.json)
#   BENCH_WORKDIR=DIR     where the tree, the image, the registries and the pulls go; kept, and the
#                         tree and image reused on the next run when made with the same settings
#                         (default: a temp dir under $TMPDIR, removed at exit)
#   BENCH_SEED=20240601   generator seed;  BENCH_SMALL_FILES=2000  small files (the /src layer);
#   BENCH_LARGE_SCALE=4.5 size factor of gen-tree.py's 5 large files (4.5: ~450 MiB of files)
#   OCIUP=PATH            ociup binary to test (default: builds target/release/ociup with cargo)
#   BENCH_IMAGE_ONLY=1    only generate the tree and build the image (with BENCH_WORKDIR: what
#                         benches/copy-floor.sh does to get the same image), then exit
#
# One registry instance per round. skopeo (containers/image) keeps a blob-info cache
# (/var/lib/containers/cache/blob-info-cache-v1.boltdb for root, no flag to move it) that
# remembers every repository it pushed a blob to or pulled it from, and on the next push to the
# same registry it mounts the blob from there instead of uploading it (seen here: a second push to
# a fresh repository made 5 `POST ?mount=` 201 and uploaded only the config). The cache is keyed
# by host:port, so a new registry on a new port each round makes every push a real upload for
# both tools. The script checks this from the access log (every push must commit all blobs with
# `PUT .../uploads/...?digest=`, with no mount request) and fails otherwise.
#
# Wall time and peak RSS come from GNU time (-f '%e %M': 10 ms resolution); client CPU (%U + %S)
# and the registry's CPU (utime + stime of its pid, /proc) are recorded too, to see who is busy.
# Throughput is the image's blob bytes (layers + config) over wall time, in MB/s (10^6 bytes).
# Targets are reported, never enforced; the exit status is non-zero only when a copy fails or a
# correctness check fails (digests, blob hashes, real uploads, request-log parsing).
set -euo pipefail
shopt -s inherit_errexit # a failing command inside $(...) stops the script too

cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=${BENCH_RUNS:-5}
JOBS=${BENCH_JOBS:-}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/copy-throughput.json}
SEED=${BENCH_SEED:-20240601}
SMALL_FILES=${BENCH_SMALL_FILES:-2000}
LARGE_SCALE=${BENCH_LARGE_SCALE:-4.5}
TAG=v1

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites ---------------------------------------------------------------------------
for tool in python3 skopeo docker-registry curl sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[ -x /usr/bin/time ] || die "GNU time is required at /usr/bin/time (apt-get install -y time)"
/usr/bin/time -f %M true 2>/dev/null || die "/usr/bin/time is not GNU time"

if [ -z "${OCIUP:-}" ]; then
  log "building ociup (release)"
  cargo build --release --quiet -p ociup-cli
  OCIUP=$ROOT/target/release/ociup
fi
[ -x "$OCIUP" ] || die "no ociup binary at $OCIUP"
JOBS_ARGS=()
[ -z "$JOBS" ] || JOBS_ARGS=(--jobs "$JOBS")

# --- work directory, registry bookkeeping and cleanup ----------------------------------------
REG_PID= # the running registry, if any
if [ -n "${BENCH_WORKDIR:-}" ]; then
  WORK=$BENCH_WORKDIR
  KEEP_WORK=1
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ociup-copy-bench.XXXXXX")
  KEEP_WORK=0
fi
stop_registry() {
  if [ -n "$REG_PID" ]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    REG_PID=
  fi
}
cleanup() {
  stop_registry
  if [ "$KEEP_WORK" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT trap on Ctrl-C too

# --- the image -------------------------------------------------------------------------------
# A gen-tree.py tree with few small files and large files scaled up, cut into 5 layers:
#   /data/logs (log lines, ~3x gzip), /data/db (binary records, ~1.3x), /srv (JS + random
#   bytes), /usr (prose), /src (the small files). Layers are 9-87 MB, ~237 MB in all.
TREE=$WORK/tree
IMAGE=$WORK/image # the OCI layout both tools copy from; holds only oci:$IMAGE:$TAG
LAYERS=(data/logs data/db srv usr src)
tree_key="$SEED $SMALL_FILES $LARGE_SCALE $(sha256sum "$ROOT/benches/gen-tree.py" | cut -d' ' -f1)"
if [ -d "$TREE" ] && [ -f "$WORK/tree.json" ] && [ "$(cat "$WORK/tree.key" 2>/dev/null)" = "$tree_key" ]; then
  log "reusing tree $TREE"
else
  log "generating tree in $TREE (seed $SEED, $SMALL_FILES small files, large files x$LARGE_SCALE)"
  rm -rf "$TREE" "$WORK/tree.json" "$WORK/image.key"
  python3 "$ROOT/benches/gen-tree.py" "$TREE" --seed "$SEED" --small "$SMALL_FILES" \
    --large-scale "$LARGE_SCALE" >"$WORK/tree.json.tmp"
  mv "$WORK/tree.json.tmp" "$WORK/tree.json"
  echo "$tree_key" >"$WORK/tree.key"
fi
# The image also depends on the ociup that builds it (its layer bytes).
image_key="$tree_key $(sha256sum "$OCIUP" | cut -d' ' -f1)"
if [ -f "$IMAGE/index.json" ] && [ "$(cat "$WORK/image.key" 2>/dev/null)" = "$image_key" ]; then
  log "reusing image oci:$IMAGE:$TAG"
else
  log "building a ${#LAYERS[@]}-layer image with ociup append"
  rm -rf "$IMAGE" "$WORK/build" "$WORK/image.key"
  base=scratch
  for ((i = 0; i < ${#LAYERS[@]}; i++)); do
    d=${LAYERS[i]}
    "$OCIUP" append --base "$base" --platform linux/amd64 --add "$TREE/$d:/$d" \
      --to "oci:$WORK/build:l$i" --json >/dev/null
    base=oci:$WORK/build:l$i
  done
  # A clean layout with only the final image (the build layout also holds l0..l3).
  "$OCIUP" copy "$base" "oci:$IMAGE:$TAG" --json >/dev/null
  rm -rf "$WORK/build"
  echo "$image_key" >"$WORK/image.key"
fi
# Digest, per-blob sizes and the total blob bytes (layers + config: what a copy moves as blobs).
IMAGE_INFO=$(python3 - "$IMAGE" "$TAG" <<'PY'
import json, sys, os
root, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(root, "index.json")))
desc = next(m for m in idx["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
alg, hexd = desc["digest"].split(":")
man = json.load(open(os.path.join(root, "blobs", alg, hexd)))
blobs = [man["config"]] + man["layers"]
print(json.dumps({
    "digest": desc["digest"], "manifest_bytes": desc["size"],
    "layers": [l["size"] for l in man["layers"]], "config_bytes": man["config"]["size"],
    "blob_count": len(blobs), "blob_bytes": sum(b["size"] for b in blobs),
    "blob_digests": [b["digest"] for b in blobs],
}))
PY
)
jq_py() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$1)" "$IMAGE_INFO"; }
IMAGE_DIGEST=$(jq_py '["digest"]')
BLOB_BYTES=$(jq_py '["blob_bytes"]')
BLOB_COUNT=$(jq_py '["blob_count"]')
log "image oci:$IMAGE:$TAG  $IMAGE_DIGEST  $BLOB_COUNT blobs, $BLOB_BYTES bytes" \
  "(layers: $(jq_py '["layers"]'))"
[ "$BLOB_BYTES" -ge 200000000 ] || log "warning: the image is under 200 MB (a smoke test?)"
# Warm the page cache: both tools read the same layout, and only the copy should be timed.
cat "$IMAGE"/blobs/sha256/* >/dev/null
echo "$IMAGE_INFO" >"$WORK/image.json" # for benches/copy-floor.sh
if [ -n "${BENCH_IMAGE_ONLY:-}" ]; then
  log "BENCH_IMAGE_ONLY: the image is ready in $IMAGE"
  exit 0
fi

# --- registry --------------------------------------------------------------------------------
USED_PORTS=" "
# free_port: sets PORT to a free 127.0.0.1 port this run has not used yet (a port used again could
# meet skopeo's cache entries from an earlier round). Not called in $(...): it updates USED_PORTS.
free_port() {
  while :; do
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    case $USED_PORTS in *" $PORT "*) ;; *) USED_PORTS+="$PORT " && return ;; esac
  done
}

# start_registry NAME: a fresh Distribution instance with its own storage, config and logs under
# $WORK/NAME; sets REG_DIR, REG_HOST, REG_PID. Access log (Apache combined) on stdout -> access.log.
start_registry() {
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

reg_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$REG_PID/stat"; }

# --- measuring one copy ----------------------------------------------------------------------
SAMPLES=$WORK/samples.tsv # id round direction tool wall rss_kib user sys reg_ticks check
REQ_DIR=$WORK/requests    # one access-log excerpt per copy: REQ_DIR/ID.log
: >"$SAMPLES"
rm -rf "$REQ_DIR" && mkdir -p "$REQ_DIR"

# measure ID CMD...: runs CMD under GNU time (stdout to $WORK/out/ID.out), then cuts the
# registry's access-log lines the copy caused into $REQ_DIR/ID.log. Prints "wall rss user sys
# reg_ticks". The end of the copy's lines is found with a marker request (named after ID) sent
# after CMD exits: a request is logged as its handler returns, so all of CMD's are logged before.
# (Runs inside $(...): it must not set variables the caller needs.)
measure() {
  local id=$1 before t0 t1
  shift
  mkdir -p "$WORK/out"
  sync # earlier writes (registry storage, pulls) must not be flushed during this copy
  before=$(wc -l <"$REG_DIR/access.log")
  t0=$(reg_cpu_ticks)
  /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.txt" "$@" >"$WORK/out/$id.out" 2>"$WORK/out/$id.err" \
    || die "$id failed: $* ($(tail -n 5 "$WORK/out/$id.err"))"
  curl -fsS -o /dev/null "http://$REG_HOST/v2/?bench-mark=$id"
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q "bench-mark=$id " "$REG_DIR/access.log" && break
    sleep 0.05
  done
  t1=$(reg_cpu_ticks)
  tail -n "+$((before + 1))" "$REG_DIR/access.log" | sed "/bench-mark=$id /,\$d" \
    | grep -v '"curl/' >"$REQ_DIR/$id.log" || true
  echo "$(tail -n 1 "$WORK/time.txt") $((t1 - t0))"
}

# manifest_sha HOST/REPO:TAG: sha256 of the raw manifest as the registry serves it (skopeo, so the
# check does not rely on ociup).
manifest_sha() {
  echo "sha256:$(skopeo inspect --raw --tls-verify=false "docker://$1" | sha256sum | cut -d' ' -f1)"
}

# check_layout DIR: index.json names $IMAGE_DIGEST for $TAG, every blob hashes to its name and the
# image's blobs are all there. Prints "ok" or a reason.
check_layout() {
  python3 - "$1" "$TAG" "$IMAGE_INFO" <<'PY'
import hashlib, json, os, sys
root, tag, info = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
idx = json.load(open(os.path.join(root, "index.json")))
names = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"]
         for m in idx["manifests"]}
if names.get(tag) != info["digest"]:
    sys.exit(print(f"index.json: {tag} -> {names.get(tag)}, expected {info['digest']}"))
d = os.path.join(root, "blobs", "sha256")
have = set()
for name in os.listdir(d):
    h = hashlib.sha256()
    with open(os.path.join(d, name), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != name:
        sys.exit(print(f"blob {name} hashes to {h.hexdigest()}"))
    have.add("sha256:" + name)
missing = set(info["blob_digests"] + [info["digest"]]) - have
print("ok" if not missing else f"missing blobs: {sorted(missing)}")
PY
}

# record ID ROUND DIRECTION TOOL "wall rss user sys ticks" CHECK
record() {
  local id=$1 round=$2 dir=$3 tool=$4 res=$5 check=$6
  read -r wall rss user sys ticks <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$round" "$dir" "$tool" "$wall" "$rss" \
    "$user" "$sys" "$ticks" "$check" >>"$SAMPLES"
  local rate=""
  case $dir in push | pull)
    rate=$(awk -v b="$BLOB_BYTES" -v w="$wall" 'BEGIN { printf "%6.1f MB/s ", b / w / 1e6 }') ;;
  esac
  log "  round $round $(printf '%-7s %-6s' "$dir" "$tool") ${wall}s ${rate}$((rss / 1024)) MiB" \
    "$(wc -l <"$REQ_DIR/$id.log") requests  $check"
}

# --- timed rounds ----------------------------------------------------------------------------
PORTS=()
log "timing $RUNS rounds: push (layout -> registry) and pull (registry -> layout), ociup and skopeo"
for ((round = 1; round <= RUNS; round++)); do
  stop_registry
  # Keep the last round's registry for the already-present checks; drop older storage.
  [ "$round" -eq 1 ] || rm -rf "$WORK/registry-$((round - 1))/data"
  start_registry "registry-$round"
  PORTS+=("${REG_HOST#*:}")
  if ((round % 2)); then order=(ociup skopeo); else order=(skopeo ociup); fi

  # push: layout -> registry, a fresh repository per tool (and a fresh registry per round).
  for tool in "${order[@]}"; do
    id=push-$tool-$round
    dest=$REG_HOST/bench/$tool-$round:$TAG
    if [ "$tool" = ociup ]; then
      res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "${JOBS_ARGS[@]}" --json \
        "oci:$IMAGE:$TAG" "$dest")
      reported=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["report"]["digest"])' \
        "$WORK/out/$id.out")
    else
      res=$(measure "$id" skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
        --digestfile "$WORK/out/$id.digest" "oci:$IMAGE:$TAG" "docker://$dest")
      reported=$(cat "$WORK/out/$id.digest")
    fi
    served=$(manifest_sha "$dest")
    check=ok
    [ "$reported" = "$IMAGE_DIGEST" ] || check="reported $reported"
    [ "$served" = "$IMAGE_DIGEST" ] || check="registry serves $served"
    record "$id" "$round" push "$tool" "$res" "$check"
  done

  # pull: registry -> a fresh layout directory, both from the image ociup pushed this round.
  for tool in "${order[@]}"; do
    id=pull-$tool-$round
    src=$REG_HOST/bench/ociup-$round:$TAG
    out=$WORK/pull-$tool
    rm -rf "$out"
    if [ "$tool" = ociup ]; then
      res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "${JOBS_ARGS[@]}" --json \
        "$src" "oci:$out:$TAG")
    else
      res=$(measure "$id" skopeo copy --quiet --preserve-digests --src-tls-verify=false \
        "docker://$src" "oci:$out:$TAG")
    fi
    check=$(check_layout "$out")
    record "$id" "$round" pull "$tool" "$res" "$check"
    rm -rf "$out"
  done
done

# --- already present, and registry -> registry within one registry (last round's registry) ---
R=$RUNS
log "already present: the push again to the same repository and tag; then a registry-to-registry copy"
res=$(measure present-ociup "$OCIUP" copy --insecure-registry "$REG_HOST" --json \
  "oci:$IMAGE:$TAG" "$REG_HOST/bench/ociup-$R:$TAG")
record present-ociup "$R" present ociup "$res" ok
res=$(measure present-skopeo skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
  "oci:$IMAGE:$TAG" "docker://$REG_HOST/bench/skopeo-$R:$TAG")
record present-skopeo "$R" present skopeo "$res" ok
# Mounts: the source is a repository of the same registry, so no blob should be uploaded.
dest=$REG_HOST/bench/ociup-mount:$TAG
res=$(measure mount-ociup "$OCIUP" copy --insecure-registry "$REG_HOST" --json \
  "$REG_HOST/bench/ociup-$R:$TAG" "$dest")
check=ok
[ "$(manifest_sha "$dest")" = "$IMAGE_DIGEST" ] || check="registry serves another digest"
record mount-ociup "$R" mount ociup "$res" "$check"
dest=$REG_HOST/bench/skopeo-mount:$TAG
res=$(measure mount-skopeo skopeo copy --quiet --preserve-digests --src-tls-verify=false \
  --dest-tls-verify=false "docker://$REG_HOST/bench/ociup-$R:$TAG" "docker://$dest")
check=ok
[ "$(manifest_sha "$dest")" = "$IMAGE_DIGEST" ] || check="registry serves another digest"
record mount-skopeo "$R" mount skopeo "$res" "$check"
stop_registry

# --- report ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# (--no-optional-locks: read-only, never touches the index of a checkout someone is working in)
if [ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain -uno 2>/dev/null || true)" ]; then
  GIT_REV+="-dirty"
fi
export SAMPLES REQ_DIR JSON_OUT RUNS GIT_REV IMAGE_INFO BLOB_BYTES BLOB_COUNT WORK
export NPROC=$(nproc) CPU="${CPU:-unknown}" MEM_KIB CLK_TCK=$(getconf CLK_TCK)
export TREE_INFO=$(cat "$WORK/tree.json") PORT_LIST="${PORTS[*]}" JOBS=${JOBS:-default}
export VERSIONS="$(skopeo --version), $(docker-registry --version | awk '{ print $2, $3 }')"
python3 - <<'PY'
import collections, json, os, re, statistics as st, sys, time

env = os.environ
blob_bytes, blob_count = int(env["BLOB_BYTES"]), int(env["BLOB_COUNT"])
image = json.loads(env["IMAGE_INFO"])
tck = int(env["CLK_TCK"])

LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\S+) "[^"]*" "([^"]*)"')


def classify(method, path):
    p = path.split("?")[0]
    if p.rstrip("/") == "/v2":
        return "GET /v2/ (ping)"
    if "/blobs/uploads/" in p:
        if method == "POST":
            return "POST blob mount" if "mount=" in path else "POST blob upload start"
        return {"PATCH": "PATCH blob chunk", "PUT": "PUT blob upload commit"}.get(method, f"{method} blob upload")
    if "/blobs/" in p:
        return f"{method} blob"
    if "/manifests/" in p:
        return f"{method} manifest"
    return f"{method} other"


def requests_of(sample_id):
    """Per-class counts, statuses and GET bytes of one copy's access-log excerpt."""
    classes, statuses, agents = collections.Counter(), collections.Counter(), collections.Counter()
    get_blob_bytes, bad = 0, 0
    for line in open(os.path.join(env["REQ_DIR"], sample_id + ".log")):
        m = LINE.match(line)
        if not m:
            bad += 1
            continue
        method, path, status, size, agent = m.groups()
        c = classify(method, path)
        classes[c] += 1
        statuses[f"{method} {status}"] += 1
        agents[agent.split("/")[0]] += 1
        if c == "GET blob" and size.isdigit():
            get_blob_bytes += int(size)
    return {"total": sum(classes.values()), "by_kind": dict(sorted(classes.items())),
            "by_status": dict(sorted(statuses.items())), "agents": dict(agents),
            "blob_get_bytes": get_blob_bytes, "unparsed_lines": bad}


samples = []
for l in open(env["SAMPLES"]).read().splitlines():
    sid, rnd, direction, tool, wall, rss, user, sys_, ticks, check = l.split("\t")
    wall = float(wall)
    s = {"id": sid, "round": int(rnd), "direction": direction, "tool": tool, "wall_s": wall,
         "mb_per_s": blob_bytes / wall / 1e6 if wall > 0 else None,
         "peak_rss_kib": int(rss), "cpu_s": round(float(user) + float(sys_), 2),
         "registry_cpu_s": int(ticks) / tck, "check": check, "requests": requests_of(sid)}
    out = os.path.join(env["WORK"], "out", sid + ".out")
    if tool == "ociup" and os.path.exists(out):
        s["ociup_report"] = json.load(open(out))["report"]
    samples.append(s)

problems = []
for s in samples:
    r, k = s["requests"], s["requests"]["by_kind"]
    if s["check"] != "ok":
        problems.append(f"{s['id']}: {s['check']}")
    if r["unparsed_lines"]:
        problems.append(f"{s['id']}: {r['unparsed_lines']} access-log lines did not parse")
    if s["direction"] == "push":
        # A real upload: every blob committed, nothing mounted.
        if k.get("PUT blob upload commit", 0) != blob_count or k.get("POST blob mount", 0):
            problems.append(f"{s['id']}: not a full upload ({k})")
    if s["direction"] == "pull" and r["blob_get_bytes"] != blob_bytes:
        problems.append(f"{s['id']}: blob GETs served {r['blob_get_bytes']} bytes, image has {blob_bytes}")
    rep = s.get("ociup_report")
    if rep and rep["digest"] != image["digest"]:
        problems.append(f"{s['id']}: ociup reported {rep['digest']}")
    if rep and s["direction"] in ("push", "pull") and (
            rep["blobs_copied"], rep["bytes_copied"]) != (blob_count, blob_bytes):
        problems.append(f"{s['id']}: ociup copied {rep['blobs_copied']} blobs, "
                        f"{rep['bytes_copied']} bytes")

# ---- medians per direction and tool
summary = {}
for direction in ("push", "pull"):
    for tool in ("ociup", "skopeo"):
        ss = [s for s in samples if s["direction"] == direction and s["tool"] == tool]
        walls = [s["wall_s"] for s in ss]
        med_wall = st.median(walls)
        summary[f"{direction}/{tool}"] = {
            "runs": len(ss),
            "wall_s": walls,
            "wall_s_median": med_wall, "wall_s_min": min(walls), "wall_s_max": max(walls),
            "mb_per_s_median": blob_bytes / med_wall / 1e6,
            "peak_rss_mib_median": st.median(s["peak_rss_kib"] for s in ss) / 1024,
            "peak_rss_mib_max": max(s["peak_rss_kib"] for s in ss) / 1024,
            "cpu_s_median": st.median(s["cpu_s"] for s in ss),
            "registry_cpu_s_median": st.median(s["registry_cpu_s"] for s in ss),
            "requests_median": st.median(s["requests"]["total"] for s in ss),
            "requests_by_kind_round1": ss[0]["requests"]["by_kind"],
        }
ratios = {d: summary[f"{d}/ociup"]["mb_per_s_median"] / summary[f"{d}/skopeo"]["mb_per_s_median"]
          for d in ("push", "pull")}
by_id = {s["id"]: s for s in samples}
present, mount = by_id["present-ociup"], by_id["mount-ociup"]
ociup_rss_max = max(s["peak_rss_kib"] for s in samples if s["tool"] == "ociup") / 1024
pk = present["requests"]["by_kind"]
mk = mount["requests"]["by_kind"]
uploads_in_mount = mk.get("PATCH blob chunk", 0) + mk.get("PUT blob upload commit", 0) \
    + mk.get("POST blob upload start", 0)
targets = [
    ("push throughput >= 4x skopeo", ratios["push"] >= 4, f"{ratios['push']:.2f}x"),
    ("pull throughput >= 4x skopeo", ratios["pull"] >= 4, f"{ratios['pull']:.2f}x"),
    ("peak RSS < 64 MiB (max of all ociup runs)", ociup_rss_max < 64, f"{ociup_rss_max:.1f} MiB"),
    ("already present: 1 HEAD per manifest, nothing else", pk == {"HEAD manifest": 1},
     ", ".join(f"{k} {v}" for k, v in pk.items())),
    ("registry->registry: all blobs mounted, no upload",
     uploads_in_mount == 0 and mount["ociup_report"]["blobs_mounted"] == blob_count,
     f"blobs_mounted {mount['ociup_report']['blobs_mounted']}/{blob_count}, "
     f"{uploads_in_mount} upload requests"),
]

machine = {"nproc": int(env["NPROC"]), "cpu": env["CPU"],
           "mem_gib": round(int(env["MEM_KIB"]) / 1048576, 1)}

# ---- printed report
def kinds(k):
    short = {"GET /v2/ (ping)": "ping", "HEAD blob": "HEAD blob", "GET blob": "GET blob",
             "POST blob upload start": "POST upload", "POST blob mount": "POST mount",
             "PATCH blob chunk": "PATCH", "PUT blob upload commit": "PUT blob",
             "HEAD manifest": "HEAD man", "GET manifest": "GET man", "PUT manifest": "PUT man"}
    return ", ".join(f"{short.get(n, n)} {c}" for n, c in k.items())

print()
print(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['mem_gib']} GiB RAM"
      f"  |  ociup {env['GIT_REV']} (--jobs {env['JOBS']})  |  {env['VERSIONS']}")
print(f"image:   {image['digest']}, {blob_count} blobs (config + {len(image['layers'])} gzip layers"
      f" of {', '.join(f'{b / 1e6:.1f}' for b in image['layers'])} MB) = {blob_bytes} bytes "
      f"({blob_bytes / 1e6:.1f} MB); registries on 127.0.0.1 (one per round), plain HTTP")
print()
hdr = (f"{'copy':<22} {'round':>5} {'wall s':>7} {'MB/s':>7} {'RSS MiB':>8} {'cpu s':>6} "
       f"{'reg cpu':>7} {'reqs':>5}  requests")
print(hdr)
print("-" * 120)
for s in samples:
    print(f"{s['direction'] + ' ' + s['tool']:<22} {s['round']:>5} {s['wall_s']:7.2f} "
          f"{format(s['mb_per_s'], '7.1f') if s['direction'] in ('push', 'pull') else '      -'} "
          f"{s['peak_rss_kib'] / 1024:8.1f} {s['cpu_s']:6.2f} {s['registry_cpu_s']:7.2f} "
          f"{s['requests']['total']:5d}  {kinds(s['requests']['by_kind'])}"
          + ("" if s["check"] == "ok" else f"  CHECK: {s['check']}"))
print()
print(f"medians over {env['RUNS']} rounds (wall min-max):")
hdr = (f"{'direction':<24} {'tool':<7} {'wall s':>7} {'(min-max)':>13} {'MB/s':>7} "
       f"{'RSS MiB':>8} {'cpu s':>6} {'reg cpu s':>9} {'requests':>8}")
print(hdr)
print("-" * len(hdr))
for key, t in summary.items():
    d, tool = key.split("/")
    label = "layout -> registry" if d == "push" else "registry -> layout"
    print(f"{label:<24} {tool:<7} {t['wall_s_median']:7.2f} "
          f"{'(' + format(t['wall_s_min'], '.2f') + '-' + format(t['wall_s_max'], '.2f') + ')':>13} "
          f"{t['mb_per_s_median']:7.1f} {t['peak_rss_mib_median']:8.1f} {t['cpu_s_median']:6.2f} "
          f"{t['registry_cpu_s_median']:9.2f} {t['requests_median']:8g}")
print()
print(f"ratios (ociup/skopeo throughput): layout -> registry {ratios['push']:.2f}x, "
      f"registry -> layout {ratios['pull']:.2f}x")
# Client and registry share the machine: (client CPU + registry CPU) / cores bounds the wall time
# from below, whatever the client does about concurrency.
nproc = int(env["NPROC"])
for d in ("push", "pull"):
    o, k = summary[f"{d}/ociup"], summary[f"{d}/skopeo"]
    floor = (o["cpu_s_median"] + o["registry_cpu_s_median"]) / nproc
    reg_floor = o["registry_cpu_s_median"] / nproc
    summary[f"{d}/ociup"]["cpu_floor_s"] = floor
    print(f"  {d}: ociup CPU {o['cpu_s_median']:.2f} s + registry CPU {o['registry_cpu_s_median']:.2f} s"
          f" over {nproc} cores = wall >= {floor:.2f} s ({blob_bytes / floor / 1e6:.0f} MB/s,"
          f" {k['wall_s_median'] / floor:.2f}x skopeo); a client using no CPU at all: "
          f"<= {k['wall_s_median'] / reg_floor:.1f}x skopeo")
for sid, what in (("present-ociup", "already present, ociup "), ("present-skopeo", "already present, skopeo"),
                  ("mount-ociup", "registry->registry, ociup "), ("mount-skopeo", "registry->registry, skopeo")):
    s = by_id[sid]
    extra = ""
    if "ociup_report" in s:
        rep = s["ociup_report"]
        extra = (f"  [manifests_present {rep['manifests_present']}, blobs_mounted {rep['blobs_mounted']},"
                 f" blobs_copied {rep['blobs_copied']}]")
    print(f"{what:<27} {s['wall_s']:5.2f} s, {s['requests']['total']:3d} requests: "
          f"{kinds(s['requests']['by_kind'])}{extra}")
print("targets:")
for name, ok, val in targets:
    print(f"  {'met    ' if ok else 'MISSED '} {name:<52} {val}")
print("correctness (digests reported and served, pulled blobs hash to their names, every push "
      f"uploaded all {blob_count} blobs, pulls fetched every byte once): "
      + ("PASS" if not problems else "FAIL"))
for p in problems:
    print(f"  {p}")

out = {
    "benchmark": "copy-throughput",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": machine,
    "ociup_rev": env["GIT_REV"],
    "ociup_jobs": env["JOBS"],
    "versions": env["VERSIONS"],
    "runs": int(env["RUNS"]),
    "registry_ports": [int(p) for p in env["PORT_LIST"].split()],
    "image": image,
    "tree": json.loads(env["TREE_INFO"]),
    "summary": summary,
    "ratios_ociup_over_skopeo_throughput": ratios,
    "targets": {name: {"met": ok, "value": val} for name, ok, val in targets},
    "correct": not problems,
    "problems": problems,
    "samples": samples,
}
with open(env["JSON_OUT"], "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
sys.exit(0 if not problems else 1)
PY
