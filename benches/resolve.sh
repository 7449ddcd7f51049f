#!/usr/bin/env bash
# Managed-image benchmark: what `ociup resolve` and `ociup status` cost against a real registry
# (CNCF Distribution, `docker-registry serve`) on 127.0.0.1: wall time and HTTP requests.
#
#   bash benches/resolve.sh            # from the repository root (or from anywhere)
#
# One registry of its own (`start_registry` of benches/lib.sh: a free 127.0.0.1 port, storage
# and logs in the work directory, plain HTTP via OCIUP_INSECURE_REGISTRIES, stopped by pid at
# exit). Base v1 of fixtures/base is pushed to HOST/lib/base:latest and one nick `app` is
# registered twice, once per catalog:
#
#   registry  OCIUP_CATALOG=HOST/ociup/catalog   catalog reads and writes are HTTP requests too
#             (target HOST/team/app)
#   layout    OCIUP_CATALOG=oci:WORK/catalog     only the image and base requests reach the
#             (target HOST/team/app-lc)          registry
#
# (Two target repositories, so that the two nicks never write each other's `app-N` tags.)
# Scenarios, BENCH_RUNS runs each per catalog, the catalogs interleaved run by run (the first
# one alternating, `bench_rotate` of lib.sh):
#   a  `ociup resolve app --json`, nothing due (the base has not moved).
#   b  `ociup resolve app --json --source-date-epoch E+r` with an upgrade: before each round the
#      base tag moves (v2, v1, v2, ... with `ociup copy oci:fixtures/base:vX HOST/lib/base:latest`,
#      not counted). A regeneration keeps the version's epoch (so replays reach the same bytes),
#      so the --source-date-epoch does not change its config. Run 1 is the cold run, as a real
#      base move is: v2's layers are not in the target repository yet (mounted) and the config
#      is new (uploaded). Later runs move between bases the repository has seen, so their
#      layers and configs are there already. Targets are judged on the median; the cold run's
#      count is shown beside it.
#   c  `ociup status` over 1,000 nicks sharing 10 bases (HOST/lib/base0..9:latest, copies of v1),
#      100 nicks per base, registered into a layout catalog with layout targets (the first nick
#      of each layout alone, the rest with `xargs -P 2`). Then bases 0-4 move to v2, so 500 nicks
#      are stale. BENCH_STATUS_RUNS timed runs with the layout catalog and, unless
#      BENCH_STATUS_REGISTRY_CATALOG=0, with that catalog copied (`ociup copy`, one tag per nick)
#      to HOST/ociup/catalog1000, the two catalogs interleaved.
#
# Per run (`measure` of lib.sh): wall time (`date +%s%N` around GNU time and the command, `sync`
# before it, untimed), peak RSS and client CPU (GNU time), the registry's CPU, and the access-log
# lines the run caused (cut at a curl marker request sent after it). Requests are split into
# catalog (the catalog repository) and image/base requests. Upgrade runs are checked: the
# answer says upgraded, the new image's layers are the new base's followed by the app's own, and
# every blob upload committed (PUT .../blobs/uploads/...?digest=) is either the new image's config
# or a JSON blob of the catalog: layer bytes sent must be 0 (mounts are not uploads).
# The analysis also lists requests that look redundant: the same request twice in one run, a
# HEAD 404 of a blob right before mounting it, a HEAD of a blob present by construction (the
# app's own layers in its own repository, the catalog's empty config once the entry exists).
#
# Targets (reported as met or MISSED, never failing the script): (a) at most 2 requests per
# resolve; (b) at most 12 requests per upgrade (median) and 0 layer bytes sent; (c) exactly 10 base
# lookups (HEAD) per status run and a median under 2 s. The exit status is non-zero only when
# setup fails, a command fails, or a result is wrong (see the checks above). Figures are medians;
# fewer than 7 runs (BENCH_RUNS, BENCH_STATUS_RUNS) make a smoke test, and the report says so.
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=20                       runs of a and b per catalog
#   BENCH_STATUS_RUNS=7                 timed status runs per catalog
#   BENCH_NICKS=1000  BENCH_BASES=10    scenario c size (nicks are spread round-robin on bases)
#   BENCH_JOBS=2                        parallel registrations (xargs -P)
#   BENCH_STATUS_REGISTRY_CATALOG=1     also time status with the catalog in the registry
#   BENCH_JSON=PATH                     JSON summary (default benches/results/resolve.json)
#   BENCH_WORKDIR=DIR                   work directory, kept (default: temp dir, removed at exit)
#   BENCH_REGISTRY=docker-registry      registry binary (Distribution 2.x: `serve CONFIG.yml`),
#                                       put first on PATH as `docker-registry` for lib.sh
#   OCIUP=PATH                          ociup binary (default: builds target/release/ociup); it is
#                                       copied into the work dir, so a concurrent cargo build
#                                       cannot swap it mid-run
#
# Needs bash 5, curl, python3, sha256sum, GNU time at /usr/bin/time and the registry binary. Only
# 127.0.0.1 is contacted. About 3-4 minutes with the defaults on 2 cores.
set -euo pipefail
shopt -s inherit_errexit # a failing command inside $(...) stops the script too
export LC_ALL=C          # '.' as the decimal point of $EPOCHREALTIME
# No ambient settings changing what ociup does (lib.sh keeps proxies off the loopback).
unset SOURCE_DATE_EPOCH HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
unset OCIUP_CATALOG OCIUP_SIGNING_KEY OCIUP_USERNAME OCIUP_PASSWORD
export OCIUP_ACTOR=bench

cd "$(dirname "$0")/.."
ROOT=$PWD
# log, die, bench_need, bench_ociup, bench_workdir, start_registry, measure, bench_rotate,
# bench_machine, bench_load, bench_git_rev.
. "$ROOT/benches/lib.sh"

RUNS=${BENCH_RUNS:-20}
STATUS_RUNS=${BENCH_STATUS_RUNS:-7}
NICKS=${BENCH_NICKS:-1000}
BASES=${BENCH_BASES:-10}
JOBS=${BENCH_JOBS:-2}
STATUS_REG=${BENCH_STATUS_REGISTRY_CATALOG:-1}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/resolve.json}
REGISTRY=${BENCH_REGISTRY:-docker-registry}
FIXTURE=$ROOT/fixtures/base
EPOCH=1700000000 # --source-date-epoch of upgrade run r is EPOCH + r

# --- prerequisites ---------------------------------------------------------------------------
[ "${BASH_VERSINFO[0]}" -ge 5 ] || die "bash 5 is required (for \$EPOCHREALTIME)"
REGISTRY=$(command -v "$REGISTRY") || die "the registry binary ${BENCH_REGISTRY:-docker-registry} is required"
[ -f "$FIXTURE/index.json" ] || die "no fixture layout at $FIXTURE"
[ "$RUNS" -ge 2 ] || die "BENCH_RUNS must be at least 2"
[ "$STATUS_RUNS" -ge 1 ] || die "BENCH_STATUS_RUNS must be at least 1"
[ "$BASES" -ge 2 ] && [ "$NICKS" -ge "$BASES" ] || die "need BENCH_NICKS >= BENCH_BASES >= 2"

# --- work directory, binary, registry --------------------------------------------------------
bench_workdir ociup-resolve-bench # WORK; the exit trap stops the registry (and removes a temp WORK)
WORK=$(cd "$WORK" && pwd)
# lib.sh starts `docker-registry`: the one asked for goes first on PATH under that name.
mkdir -p "$WORK/bin"
ln -sf "$REGISTRY" "$WORK/bin/docker-registry"
export PATH=$WORK/bin:$PATH
bench_need curl python3 xargs sha256sum docker-registry

OCIUP_FROM="given as OCIUP"
[ -n "${OCIUP:-}" ] || OCIUP_FROM="built from the checkout"
bench_ociup
OCIUP_SRC=$OCIUP
cp "$OCIUP" "$WORK/bin/ociup" # a snapshot: others may rebuild target/release meanwhile
OCIUP=$WORK/bin/ociup

# Every scratch directory of an earlier run with the same BENCH_WORKDIR goes: fresh state.
rm -rf "$WORK/out" "$WORK/requests" "$WORK/catalog" "$WORK/c" "$WORK/files"
mkdir -p "$WORK/out" "$WORK/requests" "$WORK/files"
RUNS_TSV=$WORK/runs.tsv
: >"$RUNS_TSV"

# timed ID SCENARIO MODE RUN NOTE CMD...: one run under `measure` (lib.sh): stdout to out/ID.out,
# stderr to out/ID.err, its access-log lines to requests/ID.log; appends a line to runs.tsv.
# `measure` stops the script when the command fails.
timed() {
  local id=$1 scenario=$2 mode=$3 run=$4 note=$5 res
  shift 5
  res=$(measure "$id" "$@")
  local wall rss user sys ticks
  read -r wall rss user sys ticks <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$scenario" "$mode" "$run" "$wall" "$rss" \
    "$user" "$sys" "$ticks" "$note" >>"$RUNS_TSV"
}

# catalog_of MODE / target_of MODE: the catalog and target repository of the nick `app`.
catalog_of() { if [ "$1" = registry ]; then echo "$HOST/ociup/catalog"; else echo "oci:$WORK/catalog"; fi; }
target_of() { if [ "$1" = registry ]; then echo "$HOST/team/app"; else echo "$HOST/team/app-lc"; fi; }

LOAD_START=$(bench_load)
MACHINE_START=$(bench_machine)
T_START=$EPOCHREALTIME
log "machine: $MACHINE_START"

# --- setup: registry, base, the nick `app` in both catalogs ----------------------------------
start_registry registry
HOST=$REG_HOST
export OCIUP_INSECURE_REGISTRIES=$HOST
log "registry $REGISTRY on $HOST (pid $REG_PID), work dir $WORK"

"$OCIUP" copy "oci:$FIXTURE:v1" "$HOST/lib/base:latest" >/dev/null
printf 'hello from the resolve benchmark\n' >"$WORK/files/hello.txt"
MODES=(registry layout)
for mode in "${MODES[@]}"; do
  OCIUP_CATALOG=$(catalog_of "$mode") "$OCIUP" register app --base "$HOST/lib/base:latest" \
    --to "$(target_of "$mode")" --add "$WORK/files/hello.txt:/etc/hello.txt" --env GREETING=hello \
    --json >"$WORK/out/register-$mode.json" 2>"$WORK/out/register-$mode.err" \
    || die "register ($mode catalog) failed: $(cat "$WORK/out/register-$mode.err")"
  log "registered app with the $mode catalog ($(catalog_of "$mode")) -> $(target_of "$mode")"
done
sync

# --- a: resolve, nothing due -----------------------------------------------------------------
log "a: $RUNS x resolve with nothing due, per catalog"
for ((r = 1; r <= RUNS; r++)); do
  bench_rotate $((r - 1)) "${MODES[@]}"
  for mode in "${ORDER[@]}"; do
    OCIUP_CATALOG=$(catalog_of "$mode") timed "a-$mode-$r" a "$mode" "$r" - \
      "$OCIUP" resolve app --json
  done
done

# --- b: resolve with an upgrade --------------------------------------------------------------
log "b: $RUNS x (move the base tag, then resolve with an upgrade), per catalog"
for ((r = 1; r <= RUNS; r++)); do
  if ((r % 2)); then v=v2; else v=v1; fi
  "$OCIUP" copy "oci:$FIXTURE:$v" "$HOST/lib/base:latest" >/dev/null # not timed, not counted
  bench_rotate $((r - 1)) "${MODES[@]}"
  for mode in "${ORDER[@]}"; do
    OCIUP_CATALOG=$(catalog_of "$mode") timed "b-$mode-$r" b "$mode" "$r" "$v" \
      "$OCIUP" resolve app --json --source-date-epoch $((EPOCH + r))
  done
  if ((r % 5 == 0)); then log "  round $r/$RUNS"; fi
done

# --- c: status over many nicks ---------------------------------------------------------------
CDIR=$WORK/c
mkdir -p "$CDIR/targets"
CAT1000=oci:$CDIR/catalog
log "c: $BASES bases, $NICKS nicks (layout catalog $CAT1000, layout targets)"
for ((k = 0; k < BASES; k++)); do
  "$OCIUP" copy "oci:$FIXTURE:v1" "$HOST/lib/base$k:latest" >/dev/null
done
# register_one I: nick n<I, 4 digits> on base I % BASES, into target layout base<I % BASES>.
export OCIUP HOST CDIR BASES CAT1000 WORK
register_one() {
  local i=$1 k=$(($1 % BASES))
  OCIUP_CATALOG=$CAT1000 "$OCIUP" register "$(printf 'n%04d' "$i")" \
    --base "$HOST/lib/base$k:latest" --to "oci:$CDIR/targets/base$k" \
    --add "$WORK/files/hello.txt:/etc/hello.txt" --env "N=$i" >/dev/null
}
export -f register_one
t_reg=$EPOCHREALTIME
# The first nick of every layout alone: two processes creating one layout at the same time can
# fail ("invalid OCI layout ... no index.json"), see the README.
for ((i = 0; i < BASES; i++)); do register_one "$i"; done
seq "$BASES" $((NICKS - 1)) | xargs -P "$JOBS" -n 1 bash -c 'register_one "$1"' _
REGISTER_S=$(python3 -c "print(round($EPOCHREALTIME - $t_reg, 2))")
log "  registered $NICKS nicks in $REGISTER_S s"
# Half the bases move: their nicks are stale.
STALE_BASES=$((BASES / 2))
for ((k = 0; k < STALE_BASES; k++)); do
  "$OCIUP" copy "oci:$FIXTURE:v2" "$HOST/lib/base$k:latest" >/dev/null
done
STATUS_MODES=(layout)
COPY_S=0
if [ "$STATUS_REG" = 1 ]; then
  log "  copying the catalog's $NICKS entries to $HOST/ociup/catalog1000 (ociup copy, -P $JOBS)"
  t_copy=$EPOCHREALTIME
  python3 -c '
import json, sys
idx = json.load(open(sys.argv[1] + "/index.json"))
for m in idx["manifests"]:
    t = m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
    if t.startswith("nick."):
        print(t)' "$CDIR/catalog" |
    xargs -P "$JOBS" -n 1 bash -c '"$OCIUP" copy "$CAT1000:$1" "$HOST/ociup/catalog1000:$1" >/dev/null' _
  COPY_S=$(python3 -c "print(round($EPOCHREALTIME - $t_copy, 2))")
  log "  copied in $COPY_S s"
  STATUS_MODES+=(registry)
fi
sync
status_catalog() { if [ "$1" = registry ]; then echo "$HOST/ociup/catalog1000"; else echo "$CAT1000"; fi; }
log "c: $STATUS_RUNS x status over $NICKS nicks, per catalog (${STATUS_MODES[*]})"
for mode in "${STATUS_MODES[@]}"; do
  # One untimed --json run first: the check of the answer (and a warm-up of the page cache).
  OCIUP_CATALOG=$(status_catalog "$mode") "$OCIUP" status --json >"$WORK/out/c-$mode-check.json"
done
for ((r = 1; r <= STATUS_RUNS; r++)); do
  bench_rotate $((r - 1)) "${STATUS_MODES[@]}"
  for mode in "${ORDER[@]}"; do
    OCIUP_CATALOG=$(status_catalog "$mode") timed "c-$mode-$r" c "$mode" "$r" - "$OCIUP" status
  done
done


# --- analysis and report (the registry is still up: the checks fetch from it) ----------------
mkdir -p "$(dirname "$JSON_OUT")"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
export JSON_OUT RUNS STATUS_RUNS NICKS BASES STALE_BASES JOBS CPU="${CPU:-unknown}" OCIUP_SRC
export GIT_REV=$(bench_git_rev) OCIUP_FROM OCIUP_SHA=$(sha256sum "$OCIUP" | cut -c1-12)
export RUNS_TSV FIXTURE REGISTER_S COPY_S EPOCH WORK HOST
export NPROC=$(nproc) MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
export LOAD_START LOAD_END=$(bench_load) MACHINE_START MACHINE_END="$(bench_machine)"
export CLK_TCK=$(getconf CLK_TCK)
export ELAPSED_S=$(python3 -c "print(round($EPOCHREALTIME - $T_START, 1))")
export REG_VERSION=$(docker-registry --version 2>&1 | head -n1)
export OCIUP_VERSION=$("$OCIUP" --version 2>&1 | head -n1)
python3 - <<'PY'
import collections, json, os, re, statistics as st, sys, time, urllib.error, urllib.request

env = os.environ
HOST, WORK = env["HOST"], env["WORK"]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
CATALOG_REPOS = ("ociup/catalog", "ociup/catalog1000")
TARGETS = {"registry": "team/app", "layout": "team/app-lc"}
failures = []

def http(method, path, accept=None):
    req = urllib.request.Request(f"http://{HOST}{path}", method=method)
    if accept:
        req.add_header("Accept", accept)
    with opener.open(req) as r:
        return r.headers, r.read()

def manifest(repo, ref):
    return json.loads(http("GET", f"/v2/{repo}/manifests/{ref}", ACCEPT)[1])

# ---- names for the digests that show up in request lines
labels = {}
def name_digest(d, label):
    """Names a digest once; a name already given to another digest gets a suffix."""
    if d in labels:
        return
    taken, n, name = set(labels.values()), 2, label
    while name in taken:
        name, n = f"{label}({n})", n + 1
    labels[d] = name
def fixture_blob(d):
    return json.load(open(os.path.join(env["FIXTURE"], "blobs", *d.split(":"))))
fidx = json.load(open(os.path.join(env["FIXTURE"], "index.json")))
base_layers = {}
for m in fidx["manifests"]:
    tag = m.get("annotations", {}).get("org.opencontainers.image.ref.name")
    if tag not in ("v1", "v2"):
        continue
    man = fixture_blob(m["digest"])
    name_digest(m["digest"], f"base-{tag}")
    name_digest(man["config"]["digest"], f"base-{tag}.config")
    base_layers[tag] = [l["digest"] for l in man["layers"]]
    for i, l in enumerate(man["layers"], 1):
        name_digest(l["digest"], f"base-{tag}.L{i}")
labels["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"] = "empty-{}"
own_layers = {}
for mode, repo in TARGETS.items():
    reg = json.load(open(f"{WORK}/out/register-{mode}.json"))
    man = manifest(repo, reg["digest"])
    # Images are named app@<version> whatever their repository: the two nicks have the same
    # recipe, base and epochs, so they produce the same images (and digests).
    name_digest(reg["digest"], "app@1")
    name_digest(man["config"]["digest"], "app@1.config")
    own = [l["digest"] for l in man["layers"] if l["digest"] not in base_layers["v1"]]
    own_layers[mode] = own
    for i, d in enumerate(own, 1):
        name_digest(d, f"own.L{i}")
layer_set = set(base_layers["v1"]) | set(base_layers["v2"]) | {d for v in own_layers.values() for d in v}

catalog_kinds = {}
def catalog_blob_kind(repo, d):
    """recipe / version#N / audit / json / not-json, from the blob's content (cached)."""
    if d not in catalog_kinds:
        try:
            v = json.loads(http("GET", f"/v2/{repo}/blobs/{d}")[1])
            if isinstance(v, dict) and "number" in v and "base_digest" in v:
                k = f"version#{v['number']}"
            elif isinstance(v, dict) and "command" in v:
                k = "audit"
            elif isinstance(v, dict) and "base" in v:
                k = "recipe"
            else:
                k = "json"
        except (urllib.error.HTTPError, ValueError):
            k = "not-json"
        catalog_kinds[d] = k
    return catalog_kinds[d]

DIG = re.compile(r"sha256(?::|%3A)([0-9a-f]{64})")
def show(path):
    """A request path for people: upload sessions shortened, digests named."""
    p = re.sub(r"/blobs/uploads/[0-9a-f-]{36}\?[^ ]*?(digest=[^& ]+)?$",
               lambda m: "/blobs/uploads/<session>" + (f"?{m.group(1)}" if m.group(1) else ""), path)
    def name(m):
        d = "sha256:" + m.group(1)
        if d in labels:
            return f"<{labels[d]}>"
        if path.startswith("/v2/ociup/catalog") and "/blobs/" in path:
            r = "/".join(path.split("/")[2:4])
            return f"<{catalog_blob_kind(r, d)} {m.group(1)[:10]}>"
        return f"<{m.group(1)[:12]}>"
    return DIG.sub(name, p)

def generic(text):
    """A shown request with the run-specific names blanked: findings compare across runs."""
    text = re.sub(r"<app@\d+", "<app@N", text)
    text = re.sub(r"<version#\d+ [0-9a-f]+>", "<version record>", text)
    return re.sub(r"<(recipe|audit|json|not-json) [0-9a-f]+>", r"<\1>", text)

def kind(path):
    """A request path with names, digests and sessions blanked: for counting by kind."""
    p = re.sub(r"\?.*$", "", path)
    p = DIG.sub("<digest>", p)
    p = re.sub(r"/blobs/uploads/[0-9a-f-]{36}", "/blobs/uploads/<session>", p)
    p = re.sub(r"/manifests/nick\.[a-z0-9_-]+", "/manifests/nick.<nick>", p)
    p = re.sub(r"/manifests/app-\d+$", "/manifests/app-<N>", p)
    p = re.sub(r"/lib/base\d+/", "/lib/base<k>/", p)
    return p

# ---- each run's access-log lines (`measure` of lib.sh cut them at a marker sent after the run,
# the marker's and any other curl line left out)
LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"')
unparsed = 0
def requests_of(rid):
    global unparsed
    reqs, other = [], 0
    for line in open(f"{WORK}/requests/{rid}.log", encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if not m:
            unparsed += 1
            other += 1
            continue
        meth, path, status, size, ua = m.groups()
        if ua.startswith("ociup/"):
            reqs.append({"method": meth, "path": path, "status": int(status),
                         "bytes": 0 if size == "-" else int(size), "ua": ua})
        else:
            other += 1
    if other:
        failures.append(f"{rid}: {other} access-log lines of another client (or unparsed) inside the run")
    return reqs

CLK = int(env["CLK_TCK"])
runs = []
for line in open(env["RUNS_TSV"]):
    rid, sc, mode, r, wall, rss, user, sys_s, ticks, note = line.rstrip("\n").split("\t")
    runs.append({"id": rid, "scenario": sc, "mode": mode, "run": int(r), "note": note,
                 "wall_ms": float(wall) * 1e3, "peak_rss_kib": int(rss),
                 "cpu_ms": (float(user) + float(sys_s)) * 1e3,
                 "registry_cpu_ms": int(ticks) * 1e3 / CLK,
                 "requests": requests_of(rid)})

def is_catalog(x):
    return any(x["path"].startswith(f"/v2/{c}/") for c in CATALOG_REPOS)

def repo_of(path):
    m = re.match(r"/v2/(.+?)/(manifests|blobs|tags)/", path)
    return m.group(1) if m else ""

# ---- per-run checks and measures
for run in runs:
    reqs = run["requests"]
    run["n"] = len(reqs)
    run["n_catalog"] = sum(1 for x in reqs if is_catalog(x))
    run["n_image"] = run["n"] - run["n_catalog"]
    run["kinds"] = dict(collections.Counter(f"{x['method']} {kind(x['path'])} {x['status']}"
                                            for x in reqs).most_common())
    out_file = f"{WORK}/out/{run['id']}.out"
    if run["scenario"] in ("a", "b"):
        try:
            ans = json.load(open(out_file))
        except ValueError:
            failures.append(f"{run['id']}: resolve printed no JSON")
            continue
        run["answer"] = ans
        name_digest(ans["digest"], f"app@{ans['version']}")
        want_up = run["scenario"] == "b"
        if ans.get("upgraded") is not want_up or ans.get("upgrade_due") or ans.get("stale"):
            failures.append(f"{run['id']}: upgraded={ans.get('upgraded')} upgrade_due="
                            f"{ans.get('upgrade_due')} stale={ans.get('stale')}, expected upgraded={want_up}")
    if run["scenario"] == "b" and "answer" in run:
        ans = run["answer"]
        repo = TARGETS[run["mode"]]
        man = manifest(repo, ans["digest"])
        cfg = man["config"]["digest"]
        name_digest(cfg, f"app@{ans['version']}.config")
        want = base_layers[run["note"]] + own_layers[run["mode"]]
        if [l["digest"] for l in man["layers"]] != want:
            failures.append(f"{run['id']}: the new image's layers are not base-{run['note']}'s then the app's own")
        # Every committed upload: what it carried.
        uploads = []
        for x in reqs:
            if "/blobs/uploads/" not in x["path"] or x["method"] not in ("PUT", "POST"):
                continue
            m = re.search(r"[?&]digest=sha256(?::|%3A)([0-9a-f]{64})", x["path"])
            if not m or x["status"] != 201:
                continue
            d, r = "sha256:" + m.group(1), repo_of(x["path"])
            size = int(http("HEAD", f"/v2/{r}/blobs/{d}")[0].get("Content-Length", "0"))
            if d in layer_set:
                what = "LAYER"
            elif r == repo and d == cfg:
                what = "config"
            elif r in CATALOG_REPOS and catalog_blob_kind(r, d) not in ("not-json",):
                what = "catalog json (" + catalog_blob_kind(r, d) + ")"
            else:
                what = "OTHER"
            uploads.append({"repo": r, "digest": d, "size": size, "what": what})
        run["uploads"] = uploads
        run["upload_requests"] = sum(1 for x in reqs if "/blobs/uploads/" in x["path"]
                                     and "mount=" not in x["path"])
        run["mounts"] = sum(1 for x in reqs if x["method"] == "POST" and "mount=" in x["path"])
        run["patches"] = sum(1 for x in reqs if x["method"] == "PATCH")
        run["layer_bytes_sent"] = sum(u["size"] for u in uploads
                                      if u["what"] == "LAYER" or u["what"] == "OTHER")
        run["config_bytes_sent"] = sum(u["size"] for u in uploads if u["what"] == "config")
        run["catalog_bytes_sent"] = sum(u["size"] for u in uploads if u["what"].startswith("catalog"))
        if run["layer_bytes_sent"]:
            failures.append(f"{run['id']}: uploads other than the config and catalog JSON: "
                            + ", ".join(f"{u['what']} {u['digest'][:19]} {u['size']} B"
                                        for u in uploads if u["what"] in ("LAYER", "OTHER")))
    if run["scenario"] == "c":
        heads = [x for x in reqs if x["method"] == "HEAD" and re.match(r"/v2/lib/base\d+/manifests/", x["path"])]
        run["base_heads"] = len(heads)
        run["distinct_base_heads"] = len({x["path"] for x in heads})
        run["base_gets"] = sum(1 for x in reqs if x["method"] == "GET"
                               and re.match(r"/v2/lib/base\d+/", x["path"]))
    if run["scenario"] != "c":  # (status runs: thousands of catalog reads, counted by kind)
        run["request_lines"] = [f"{x['method']:<5} {show(x['path'])} {x['status']}" for x in reqs]

# The status answers (the untimed --json runs): every nick, the right ones stale.
status_check = {}
nicks, bases, stale_bases = int(env["NICKS"]), int(env["BASES"]), int(env["STALE_BASES"])
for mode in sorted({r["mode"] for r in runs if r["scenario"] == "c"}):
    ans = json.load(open(f"{WORK}/out/c-{mode}-check.json"))
    c = collections.Counter(a["status"] for a in ans)
    want_stale = sum(1 for i in range(nicks) if i % bases < stale_bases)
    bad = [a["nick"] for a in ans
           if a["status"] != ("stale" if int(a["nick"][1:]) % bases < stale_bases else "current")]
    status_check[mode] = {"nicks": len(ans), "by_status": dict(c), "wrong": len(bad)}
    if len(ans) != nicks or bad or c.get("stale", 0) != want_stale:
        failures.append(f"status ({mode} catalog): {len(ans)} nicks, {dict(c)}, {len(bad)} wrong "
                        f"(expected {nicks}, {want_stale} stale)")

# ---- redundancy: requests that look avoidable, per run
def redundant(run):
    reqs, found = run["requests"], []
    target = TARGETS.get(run["mode"], "")
    # A manifest PUT refused for its missing blobs (400) and repeated once they are there is
    # the design; the same request with the same answer twice is waste.
    c = collections.Counter((x["method"], x["path"], x["status"]) for x in reqs
                            if "/blobs/uploads/" not in x["path"])
    for (meth, p, status), n in c.items():
        if n > 1:
            found.append(f"{n}x {meth} {show(p)} -> {status} (the same request, the same answer)")
    missing = set()
    for x in reqs:
        m = DIG.search(x["path"])
        if x["method"] == "HEAD" and "/blobs/" in x["path"] and x["status"] == 404 and m:
            missing.add((repo_of(x["path"]), m.group(1)))
        if x["method"] == "POST" and "mount=" in x["path"] and m and (repo_of(x["path"]), m.group(1)) in missing:
            found.append(f"HEAD /v2/{repo_of(x['path'])}/blobs/{show('sha256:' + m.group(1))} 404 "
                         "right before POST ?mount= of it (the mount alone answers 201 or 202)")
        if x["method"] == "HEAD" and "/blobs/" in x["path"] and m and repo_of(x["path"]) == target \
                and "sha256:" + m.group(1) in own_layers.get(run["mode"], []):
            found.append(f"HEAD {show(x['path'])} {x['status']}: the app's own layer in its own "
                         "repository, referenced by the current version: present by construction")
        if x["method"] == "HEAD" and is_catalog(x) and m and labels.get("sha256:" + m.group(1)) == "empty-{}":
            found.append(f"HEAD {show(x['path'])} {x['status']}: the empty config of the catalog entry "
                         "just read, which references it: present by construction")
    return found

# ---- summaries
def q(xs):
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0]
    qs = st.quantiles(xs, n=4, method="inclusive")
    return qs[0], qs[2]

groups = collections.OrderedDict()
for sc in ("a", "b", "c"):
    for mode in ("registry", "layout"):
        rs = [r for r in runs if r["scenario"] == sc and r["mode"] == mode]
        if rs:
            groups[(sc, mode)] = sorted(rs, key=lambda r: r["run"])

def summary(rs):
    w, n = [r["wall_ms"] for r in rs], [r["n"] for r in rs]
    s = {"runs": len(rs), "wall_ms": [round(x, 3) for x in w], "wall_ms_median": st.median(w),
         "wall_ms_p25_p75": q(w), "wall_ms_min": min(w), "wall_ms_max": max(w),
         "requests": n, "requests_median": st.median(n), "requests_min": min(n), "requests_max": max(n),
         "catalog_requests_median": st.median(r["n_catalog"] for r in rs),
         "image_requests_median": st.median(r["n_image"] for r in rs),
         "peak_rss_mib_median": st.median(r["peak_rss_kib"] for r in rs) / 1024,
         "cpu_ms_median": st.median(r["cpu_ms"] for r in rs),
         "registry_cpu_ms_median": st.median(r["registry_cpu_ms"] for r in rs)}
    if "uploads" in rs[0]:
        s.update({"upload_requests_median": st.median(r["upload_requests"] for r in rs),
                  "mounts_total": sum(r["mounts"] for r in rs),
                  "patches_total": sum(r["patches"] for r in rs),
                  "layer_bytes_sent_total": sum(r["layer_bytes_sent"] for r in rs),
                  "config_bytes_sent_median": st.median(r["config_bytes_sent"] for r in rs),
                  "catalog_bytes_sent_median": st.median(r["catalog_bytes_sent"] for r in rs)})
    if "base_heads" in rs[0]:
        s.update({"base_heads": [r["base_heads"] for r in rs],
                  "distinct_base_heads": [r["distinct_base_heads"] for r in rs],
                  "base_gets_total": sum(r["base_gets"] for r in rs)})
    # The representative run: the first one with the median request count (cold run 1 of b
    # aside when another run has it).
    med = st.median(n)
    cands = [r for r in rs if r["n"] == round(med)] or rs
    if rs[0]["scenario"] == "b" and len(cands) > 1:
        cands = [r for r in cands if r["run"] != 1] or cands
    s["representative_run"] = cands[0]["id"]
    found = collections.Counter(f for r in rs for f in sorted({generic(x) for x in redundant(r)}))
    s["redundant"] = [f"{f} [in {c} of {len(rs)} runs]" for f, c in sorted(found.items())]
    return s

summaries = {f"{sc}/{mode}": summary(rs) for (sc, mode), rs in groups.items()}
by_id = {r["id"]: r for r in runs}

machine = {"nproc": int(env["NPROC"]), "cpu": env["CPU"],
           "mem_gib": round(int(env["MEM_KIB"]) / 1048576, 1),
           "loadavg_start": env["LOAD_START"], "loadavg_end": env["LOAD_END"],
           "at_start": env["MACHINE_START"], "at_end": env["MACHINE_END"]}
TITLES = {"a": "resolve, nothing due", "b": "resolve, upgrade",
          "c": f"status, {nicks} nicks / {bases} bases"}

# ---- printed report
print()
print(f"ociup: {env['OCIUP_SRC']} ({env['OCIUP_FROM']}; {env['OCIUP_VERSION']}, sha256 {env['OCIUP_SHA']}), "
      f"checkout {env['GIT_REV']}")
print(f"registry {env['REG_VERSION']} on {HOST}; {env['RUNS']} runs of a and b, {env['STATUS_RUNS']} of c "
      f"per catalog; whole run {env['ELAPSED_S']} s")
print(f"scenario c setup: {nicks} registrations in {env['REGISTER_S']} s (xargs -P {env['JOBS']})"
      + (f", catalog copied to the registry in {env['COPY_S']} s" if float(env["COPY_S"]) else ""))
print()
hdr = (f"{'scenario':<34} {'catalog':<8} {'runs':>4} {'wall ms':>8} {'(p25-p75)':>15} "
       f"{'reqs':>5} {'(min-max)':>9} {'catalog':>7} {'images':>6} {'uploads':>7} {'mounts':>6} "
       f"{'layer B':>7} {'RSS MiB':>7} {'CPU ms':>7} {'reg ms':>6}")
print(hdr)
print("-" * len(hdr))
for key, s in summaries.items():
    sc, mode = key.split("/")
    p = s["wall_ms_p25_p75"]
    rng = f"{s['requests_min']}-{s['requests_max']}"
    up = f"{s['upload_requests_median']:g}" if "upload_requests_median" in s else "-"
    mo = f"{s['mounts_total']}" if "mounts_total" in s else "-"
    lb = f"{s['layer_bytes_sent_total']}" if "layer_bytes_sent_total" in s else "-"
    print(f"{sc + '  ' + TITLES[sc]:<34} {mode:<8} {s['runs']:>4} {s['wall_ms_median']:8.1f} "
          f"{'(' + format(p[0], '.1f') + '-' + format(p[1], '.1f') + ')':>15} "
          f"{s['requests_median']:5g} {rng:>9} {s['catalog_requests_median']:7g} "
          f"{s['image_requests_median']:6g} {up:>7} {mo:>6} {lb:>7} "
          f"{s['peak_rss_mib_median']:7.1f} {s['cpu_ms_median']:7.0f} {s['registry_cpu_ms_median']:6.0f}")
print()
print("wall ms: process start to exit (median, quartiles); reqs: HTTP requests in the access log")
print("per run (median, min-max), split into catalog-repository and image/base requests; uploads:")
print("requests on /blobs/uploads/ other than mounts (median per run); mounts: POST ?mount= over")
print("all runs; layer B: bytes of committed uploads that were not the new config or catalog JSON,")
print("over all runs (must be 0); RSS MiB, CPU ms: ociup's peak RSS and CPU time (user + system),")
print("reg ms: the registry's CPU time during the run (medians; `measure` of benches/lib.sh, whose")
print("wall time includes starting GNU time, about a millisecond).")
if int(env["RUNS"]) < 7 or int(env["STATUS_RUNS"]) < 7:
    print("note: fewer than 7 runs per figure: a smoke test, not a measurement")

for key, s in summaries.items():
    sc, mode = key.split("/")
    rep = by_id[s["representative_run"]]
    print(f"\n{sc} {TITLES[sc]}, {mode} catalog: {rep['n']} requests in run {rep['run']} "
          f"({rep['n_catalog']} catalog, {rep['n_image']} image/base), wall {rep['wall_ms']:.1f} ms")
    if sc == "c":
        for k, n in rep["kinds"].items():
            print(f"  {n:5d} x {k}")
        print(f"  base lookups per run: {s['base_heads']} HEAD ({s['distinct_base_heads']} distinct), "
              f"base GETs in all runs: {s['base_gets_total']}; peak RSS {s['peak_rss_mib_median']:.1f} MiB")
        sc_ = status_check.get(mode)
        if sc_:
            print(f"  answer: {sc_['nicks']} nicks, {sc_['by_status']}, {sc_['wrong']} wrong")
    else:
        for line in rep["request_lines"]:
            print(f"  {line}")
        if sc == "b":
            print(f"  uploads committed: " + (", ".join(f"{u['what']} {u['size']} B" for u in rep["uploads"]) or "none"))
            cold = by_id[f"b-{mode}-1"]
            if cold["id"] != rep["id"]:
                a_ = collections.Counter(rep["kinds"])
                b_ = collections.Counter(cold["kinds"])
                extra, less = b_ - a_, a_ - b_
                print(f"  cold run 1 ({cold['n']} requests) differs by: "
                      + ", ".join([f"+{n} {k}" for k, n in extra.items()]
                                  + [f"-{n} {k}" for k, n in less.items()]) if (extra or less) else
                      f"  cold run 1: the same requests")
            spread = sorted(collections.Counter(r["n"] for r in groups[(sc, mode)]).items())
            print("  requests per run: " + ", ".join(f"{n} ({c} runs)" for n, c in spread))
    if s["redundant"]:
        print("  looks redundant:")
        for f in s["redundant"]:
            print(f"    - {f}")

def met(ok):
    return "met    " if ok else "MISSED "
targets = []
for mode in ("layout", "registry"):
    s = summaries.get(f"a/{mode}")
    if s:
        targets.append((f"a: resolve, nothing due, <= 2 requests ({mode} catalog)", s["requests_max"] <= 2,
                        f"median {s['requests_median']:g}, max {s['requests_max']} "
                        f"({s['catalog_requests_median']:g} catalog + {s['image_requests_median']:g} image)"))
for mode in ("layout", "registry"):
    s = summaries.get(f"b/{mode}")
    if s:
        targets.append((f"b: upgrade, <= 12 requests ({mode} catalog)", s["requests_median"] <= 12,
                        f"median {s['requests_median']:g}, max {s['requests_max']} (the cold run) "
                        f"({s['catalog_requests_median']:g} catalog + {s['image_requests_median']:g} image)"))
        targets.append((f"b: upgrade, 0 layer bytes sent ({mode} catalog)", s["layer_bytes_sent_total"] == 0,
                        f"{s['layer_bytes_sent_total']} B; {s['patches_total']} PATCH; config "
                        f"{s['config_bytes_sent_median']:g} B + catalog {s['catalog_bytes_sent_median']:g} B per run"))
for mode in ("layout", "registry"):
    s = summaries.get(f"c/{mode}")
    if s:
        ok10 = all(h == bases for h in s["base_heads"]) and all(h == bases for h in s["distinct_base_heads"])
        targets.append((f"c: status, exactly {bases} base HEADs ({mode} catalog)", ok10,
                        f"{s['base_heads']}"))
        targets.append((f"c: status, median < 2 s ({mode} catalog)", s["wall_ms_median"] < 2000,
                        f"{s['wall_ms_median']:.0f} ms, {s['requests_median']:g} requests "
                        f"({s['catalog_requests_median']:g} catalog)"))
print("\ntargets:")
for name, ok, val in targets:
    print(f"  {met(ok)} {name:<52} {val}")
if unparsed:
    print(f"note: {unparsed} access-log lines did not parse")
for f in failures:
    print(f"FAILED: {f}")
print(f"\nmachine: {machine['nproc']} cores, {machine['cpu']}, {machine['mem_gib']} GiB RAM, "
      f"load {machine['loadavg_start']} -> {machine['loadavg_end']}")
print(f"  at the start: {machine['at_start']}")
print(f"  at the end:   {machine['at_end']}")

# ---- JSON
def run_json(r):
    return {k: v for k, v in r.items() if k != "requests"}
out = {
    "benchmark": "resolve",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": machine,
    "ociup_rev": env["GIT_REV"], "ociup_version": env["OCIUP_VERSION"],
    "ociup_binary": env["OCIUP_SRC"], "ociup_binary_from": env["OCIUP_FROM"],
    "ociup_binary_sha256_12": env["OCIUP_SHA"], "registry": env["REG_VERSION"],
    "settings": {"runs": int(env["RUNS"]), "status_runs": int(env["STATUS_RUNS"]),
                 "nicks": nicks, "bases": bases, "stale_bases": stale_bases,
                 "jobs": int(env["JOBS"]), "upgrade_epoch_base": int(env["EPOCH"])},
    "elapsed_s": float(env["ELAPSED_S"]),
    "setup": {"register_s": float(env["REGISTER_S"]), "catalog_copy_s": float(env["COPY_S"])},
    "summary": summaries,
    "status_check": status_check,
    "targets": {n: {"met": ok, "value": v} for n, ok, v in targets},
    "failures": failures,
    "runs": [run_json(r) for r in runs],
}
with open(env["JSON_OUT"], "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"JSON summary: {env['JSON_OUT']}")
sys.exit(1 if failures else 0)
PY
