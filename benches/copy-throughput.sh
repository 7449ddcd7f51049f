#!/usr/bin/env bash
# Copy throughput benchmark: `ociup copy` beside `crane` and `skopeo copy` between an OCI layout
# and a real registry (CNCF Distribution, `docker-registry serve`) on 127.0.0.1, on two generated
# images: "large", one ~95 MB layer, and "mixed", 20 layers of 1 KB to 50 MB (~118 MB). Pushes go
# each to a fresh repository; pulls fetch the image ociup pushed into a fresh layout. Per copy:
# wall time, peak RSS, client and registry CPU, and the requests from the registry's access log.
#
#   bash benches/copy-throughput.sh            # from the repository root (or from anywhere)
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=7          rounds; each round starts a fresh registry per image and runs every
#                         tool once per direction, the order rotated round by round
#   BENCH_IMAGES="large mixed"   which images;  BENCH_DIRECTIONS="push pull"   which directions
#   BENCH_TOOLS="ociup crane skopeo"           which tools
#   BENCH_JOBS=           ociup --jobs (default: ociup's own default)
#   BENCH_JSON=PATH       JSON summary (default benches/results/copy-throughput.json)
#   BENCH_WORKDIR=DIR     images, registries and pulls; kept, and the images reused (default: a
#                         temp dir, removed at exit)
#   BENCH_SEED=20240601   seed of the generated layer bytes
#   OCIUP=PATH            ociup binary (default: builds target/release/ociup with cargo)
#   CRANE=PATH            crane binary (default: crane on PATH or in ~/.local/bin; see
#                         ../shared/peers/install.sh)
#   BENCH_IMAGE_ONLY=1    only generate the images (in BENCH_WORKDIR; benches/copy-floor.sh
#                         uses the mixed one, at WORK/image with WORK/image.json), then exit
#
# Layers are tar archives of one file of seeded pseudo-random bytes, gzip-wrapped without
# compression (stored deflate blocks: valid gzip, so skopeo keeps them as they are, and cheap to
# make). skopeo keeps a blob-info cache (/var/lib/containers/cache/blob-info-cache-v1.boltdb for
# root) and mounts blobs from wherever it saw them before: the cache is removed before each of its
# runs (untimed), and every round uses a new registry on a port not used before in the run.
# Every push must commit every blob (`PUT ...?digest=`) and mount none; the script checks it.
# Targets are reported, never enforced; the exit status is non-zero only when a copy or a
# correctness check fails.
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/benches/lib.sh"

RUNS=${BENCH_RUNS:-7}
JOBS=${BENCH_JOBS:-}
IMAGES=(${BENCH_IMAGES:-large mixed})
DIRECTIONS=(${BENCH_DIRECTIONS:-push pull})
TOOLS=(${BENCH_TOOLS:-ociup crane skopeo})
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/copy-throughput.json}
SEED=${BENCH_SEED:-20240601}
TAG=v1
SKOPEO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb

bench_need python3 curl docker-registry sha256sum
bench_workdir ociup-copy-bench
bench_ociup
if [ -z "${BENCH_IMAGE_ONLY:-}" ]; then
  for tool in "${TOOLS[@]}"; do
    case $tool in
      crane)
        CRANE=${CRANE:-$(command -v crane || echo "$HOME/.local/bin/crane")}
        [ -x "$CRANE" ] || die "no crane at $CRANE (bash ../shared/peers/install.sh)" ;;
      skopeo) bench_need skopeo ;;
    esac
  done
fi
JOBS_ARGS=()
[ -z "$JOBS" ] || JOBS_ARGS=(--jobs "$JOBS")

# --- the images ------------------------------------------------------------------------------
# image_dir NAME: the layout of an image ("mixed" is WORK/image, where copy-floor.sh looks).
image_dir() { if [ "$1" = mixed ]; then echo "$WORK/image"; else echo "$WORK/image-$1"; fi; }

for img in "${IMAGES[@]}"; do
  dir=$(image_dir "$img")
  key="$img $SEED $(sha256sum "$ROOT/benches/copy-throughput.sh" | cut -d' ' -f1)"
  if [ -f "$dir/index.json" ] && [ "$(cat "$dir.key" 2>/dev/null)" = "$key" ]; then
    log "reusing image $img at $dir"
    continue
  fi
  log "generating image $img in $dir"
  rm -rf "$dir" "$dir.key"
  python3 - "$dir" "$img" "$SEED" "$TAG" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
root, name, seed, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if name == "large":
    sizes = [95_000_000]
elif name == "mixed":
    # 1 KB to 50 MB, evenly spaced on a log scale: ~118 MB in 20 layers.
    sizes = [round(1000 * (50_000_000 / 1000) ** (i / 19)) for i in range(20)]
else:
    sys.exit(f"unknown image {name}")
os.makedirs(os.path.join(root, "blobs", "sha256"))

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}

layers, diff_ids = [], []
for i, size in enumerate(sizes):
    payload = random.Random(f"{seed}-{name}-{i}").randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(f"layer{i}/data.bin")
        info.size, info.mtime, info.mode = size, 0, 0o644
        t.addfile(info, io.BytesIO(payload))
    tar = buf.getvalue()
    diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    layers.append(dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip",
                       **put(gzip.compress(tar, compresslevel=0, mtime=0))))
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids},
                     "history": [{"created_by": f"layer {i}"} for i in range(len(sizes))]},
                    separators=(",", ":")).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **put(config)),
                       "layers": layers}, separators=(",", ":")).encode()
m = put(manifest)
with open(os.path.join(root, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(root, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [dict(mediaType="application/vnd.oci.image.manifest.v1+json", **m,
                                  platform={"architecture": "amd64", "os": "linux"},
                                  annotations={"org.opencontainers.image.ref.name": tag})]}, f)
PY
  echo "$key" >"$dir.key"
done

# image_info DIR: digest, blob sizes and total blob bytes (layers + config) of the image, as JSON.
image_info() {
  python3 - "$1" "$TAG" <<'PY'
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
}
declare -A INFO
for img in "${IMAGES[@]}"; do
  INFO[$img]=$(image_info "$(image_dir "$img")")
  echo "${INFO[$img]}" >"$(image_dir "$img").json"
done
if [ -n "${BENCH_IMAGE_ONLY:-}" ]; then
  log "BENCH_IMAGE_ONLY: the images are ready in $WORK"
  exit 0
fi
info() { python3 -c "import json,sys; print(json.loads(sys.argv[1])$2)" "${INFO[$1]}"; }

# --- one copy --------------------------------------------------------------------------------
# manifest_sha HOST/REPO:TAG: sha256 of the manifest as the registry serves it (curl: the check
# relies on no tool under test).
manifest_sha() {
  local ref=$1 repo tag
  repo=${ref%:*} tag=${ref##*:}
  echo "sha256:$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://${repo%%/*}/v2/${repo#*/}/manifests/$tag" | sha256sum | cut -d' ' -f1)"
}

# check_blobs DIR INFO: every file under DIR/blobs/sha256 hashes to its name and every blob of
# the image is there. Prints "ok" or a reason.
check_blobs() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, os, sys
root, info = sys.argv[1], json.loads(sys.argv[2])
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

SAMPLES=$WORK/samples.tsv # id image round direction tool wall rss user sys reg_ticks load check
: >"$SAMPLES"
rm -rf "$WORK/requests" "$WORK/out"

# copy_one IMAGE ROUND DIRECTION TOOL: times one copy, checks it, appends a sample.
copy_one() {
  local img=$1 round=$2 direction=$3 tool=$4
  local id=$direction-$img-$tool-$round src dir check=ok res reported load
  dir=$(image_dir "$img")
  local dest=$REG_HOST/bench/$img-$tool-$round:$TAG
  local pulled=$REG_HOST/bench/$img-ociup-$round:$TAG out=$WORK/pull-$tool
  [ "$tool" != skopeo ] || rm -f "$SKOPEO_CACHE"
  rm -rf "$out"
  load=$(cut -d' ' -f1 /proc/loadavg)
  case $direction-$tool in
    push-ociup) res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "${JOBS_ARGS[@]}" \
      --json "oci:$dir:$TAG" "$dest") ;;
    push-crane) res=$(measure "$id" "$CRANE" push --insecure "$dir" "$dest") ;;
    push-skopeo) res=$(measure "$id" skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$dir:$TAG" "docker://$dest") ;;
    pull-ociup) res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "${JOBS_ARGS[@]}" \
      --json "$pulled" "oci:$out:$TAG") ;;
    pull-crane) res=$(measure "$id" "$CRANE" pull --insecure --format oci "$pulled" "$out") ;;
    pull-skopeo) res=$(measure "$id" skopeo copy --quiet --preserve-digests --src-tls-verify=false \
      "docker://$pulled" "oci:$out:$TAG") ;;
    *) die "unknown copy $direction-$tool" ;;
  esac
  if [ "$direction" = push ]; then
    reported=$(manifest_sha "$dest")
    [ "$reported" = "$(info "$img" '["digest"]')" ] || check="registry serves $reported"
  else
    check=$(check_blobs "$out" "${INFO[$img]}")
    rm -rf "$out"
  fi
  read -r wall rss user sys ticks <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$img" "$round" "$direction" \
    "$tool" "$wall" "$rss" "$user" "$sys" "$ticks" "$load" "$check" >>"$SAMPLES"
  log "  $(printf '%-6s %-5s %-6s round %-2s' "$img" "$direction" "$tool" "$round") ${wall}s" \
    "$(awk -v b="$(info "$img" '["blob_bytes"]')" -v w="$wall" 'BEGIN { printf "%6.1f MB/s", b / w / 1e6 }')" \
    "$((rss / 1024)) MiB  $(wc -l <"$WORK/requests/$id.log") requests  load $load  $check"
}

# --- timed rounds ----------------------------------------------------------------------------
log "machine: $(bench_machine)"
log "timing $RUNS rounds of ${DIRECTIONS[*]} with ${TOOLS[*]} on ${IMAGES[*]}"
for ((round = 1; round <= RUNS; round++)); do
  for img in "${IMAGES[@]}"; do
    # A fresh registry (new port) per image and round; the older storage goes.
    [ -z "${REG_DIR:-}" ] || { stop_registry; rm -rf "$REG_DIR/data"; }
    start_registry "registry-$img-$round"
    bench_rotate "$((round - 1))" "${TOOLS[@]}"
    for direction in "${DIRECTIONS[@]}"; do
      # A pull needs the image ociup pushed this round.
      if [ "$direction" = pull ] && ! [[ " ${DIRECTIONS[*]} " == *" push "* && " ${TOOLS[*]} " == *" ociup "* ]]; then
        copy_one "$img" "$round" push ociup
      fi
      for tool in "${ORDER[@]}"; do copy_one "$img" "$round" "$direction" "$tool"; done
    done
  done
done

# --- already present, and registry -> registry within one registry (the last registry) -------
EXTRA=()
if [[ " ${TOOLS[*]} " == *" ociup "* && " ${DIRECTIONS[*]} " == *" push "* ]]; then
  img=${IMAGES[-1]}
  log "already present: ociup pushes $img again to the same tag; then a registry-to-registry copy"
  res=$(measure present-ociup "$OCIUP" copy --insecure-registry "$REG_HOST" --json \
    "oci:$(image_dir "$img"):$TAG" "$REG_HOST/bench/$img-ociup-$RUNS:$TAG")
  EXTRA+=("present-ociup $res")
  res=$(measure mount-ociup "$OCIUP" copy --insecure-registry "$REG_HOST" --json \
    "$REG_HOST/bench/$img-ociup-$RUNS:$TAG" "$REG_HOST/bench/$img-mount:$TAG")
  EXTRA+=("mount-ociup $res")
  [ "$(manifest_sha "$REG_HOST/bench/$img-mount:$TAG")" = "$(info "$img" '["digest"]')" ] \
    || die "the mounted copy serves another digest"
fi
stop_registry

# --- report ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
export SAMPLES JSON_OUT RUNS WORK
export GIT_REV=$(bench_git_rev) MACHINE="$(bench_machine)" NPROC=$(nproc) CLK_TCK=$(getconf CLK_TCK)
export INFOS=$(for img in "${IMAGES[@]}"; do echo "$img ${INFO[$img]}"; done)
export EXTRA_LIST=$(printf '%s\n' "${EXTRA[@]}") JOBS=${JOBS:-default}
export VERSIONS="crane $("${CRANE:-true}" version 2>/dev/null || echo -), $(skopeo --version 2>/dev/null || echo no skopeo), $(docker-registry --version | awk '{ print $2, $3 }')"
python3 - <<'PY'
import collections, json, os, re, statistics as st, sys, time

env = os.environ
infos = {l.split(" ", 1)[0]: json.loads(l.split(" ", 1)[1]) for l in env["INFOS"].splitlines()}
tck = int(env["CLK_TCK"])
LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\S+) "[^"]*" "([^"]*)"')


def classify(method, path):
    p = path.split("?")[0]
    if p.rstrip("/") == "/v2":
        return "ping"
    if "/blobs/uploads/" in p:
        if method == "POST":
            return "POST mount" if "mount=" in path else "POST upload"
        return {"PATCH": "PATCH", "PUT": "PUT blob"}.get(method, f"{method} upload")
    if "/blobs/" in p:
        return f"{method} blob"
    if "/manifests/" in p:
        return f"{method} manifest"
    return f"{method} other"


def requests_of(sid):
    kinds, get_bytes, bad = collections.Counter(), 0, 0
    for line in open(os.path.join(env["WORK"], "requests", sid + ".log")):
        m = LINE.match(line)
        if not m:
            bad += 1
            continue
        method, path, status, size, agent = m.groups()
        c = classify(method, path)
        kinds[c] += 1
        if c == "GET blob" and size.isdigit():
            get_bytes += int(size)
    return {"total": sum(kinds.values()), "by_kind": dict(sorted(kinds.items())),
            "blob_get_bytes": get_bytes, "unparsed_lines": bad}


samples, problems = [], []
for l in open(env["SAMPLES"]).read().splitlines():
    sid, img, rnd, direction, tool, wall, rss, user, sys_, ticks, load, check = l.split("\t")
    info = infos[img]
    s = {"id": sid, "image": img, "round": int(rnd), "direction": direction, "tool": tool,
         "wall_s": float(wall), "mb_per_s": info["blob_bytes"] / float(wall) / 1e6,
         "peak_rss_kib": int(rss), "cpu_s": round(float(user) + float(sys_), 2),
         "registry_cpu_s": int(ticks) / tck, "load_1min": float(load), "check": check,
         "requests": requests_of(sid)}
    samples.append(s)
    k = s["requests"]["by_kind"]
    if check != "ok":
        problems.append(f"{sid}: {check}")
    if s["requests"]["unparsed_lines"]:
        problems.append(f"{sid}: access-log lines did not parse")
    if direction == "push" and (k.get("PUT blob", 0) != info["blob_count"] or k.get("POST mount", 0)):
        problems.append(f"{sid}: not a full upload ({k})")
    if direction == "pull" and s["requests"]["blob_get_bytes"] < info["blob_bytes"]:
        problems.append(f"{sid}: blob GETs served {s['requests']['blob_get_bytes']} bytes, "
                        f"the image has {info['blob_bytes']}")

summary = {}
for img in infos:
    for direction in ("push", "pull"):
        for tool in ("ociup", "crane", "skopeo"):
            ss = [s for s in samples if (s["image"], s["direction"], s["tool"]) == (img, direction, tool)]
            if not ss:
                continue
            walls = [s["wall_s"] for s in ss]
            med = st.median(walls)
            summary[f"{img}/{direction}/{tool}"] = {
                "runs": len(ss), "wall_s": walls, "wall_s_median": med,
                "wall_s_min": min(walls), "wall_s_max": max(walls),
                "mb_per_s_median": infos[img]["blob_bytes"] / med / 1e6,
                "peak_rss_mib_max": max(s["peak_rss_kib"] for s in ss) / 1024,
                "cpu_s_median": st.median(s["cpu_s"] for s in ss),
                "registry_cpu_s_median": st.median(s["registry_cpu_s"] for s in ss),
                "load_1min_median": st.median(s["load_1min"] for s in ss),
                "requests_median": st.median(s["requests"]["total"] for s in ss),
                "requests_by_kind_round1": ss[0]["requests"]["by_kind"],
            }

ratios, targets = {}, []
for img in infos:
    for direction in ("push", "pull"):
        o = summary.get(f"{img}/{direction}/ociup")
        for peer in ("crane", "skopeo"):
            p = summary.get(f"{img}/{direction}/{peer}")
            if o and p:
                r = o["mb_per_s_median"] / p["mb_per_s_median"]
                ratios[f"{img}/{direction}/ociup_over_{peer}"] = r
                want = {("push", "crane"): 1.1, ("push", "skopeo"): 1.5, ("pull", "crane"): 1.1}.get((direction, peer))
                if want:
                    targets.append((f"{img} {direction}: ociup >= {want}x {peer}", r >= want, f"{r:.2f}x"))
rss = [s["peak_rss_kib"] / 1024 for s in samples if s["tool"] == "ociup"]
if rss:
    targets.append(("ociup peak RSS < 64 MiB (max of all runs)", max(rss) < 64, f"{max(rss):.1f} MiB"))
extra = {}
for l in env["EXTRA_LIST"].splitlines():
    if l.strip():
        name, wall, rss_k, user, sys_, ticks = l.split()
        extra[name] = {"wall_s": float(wall), "requests": requests_of(name)}
if "present-ociup" in extra:
    pk = extra["present-ociup"]["requests"]["by_kind"]
    targets.append(("already present: 1 HEAD of the manifest, nothing else", pk == {"HEAD manifest": 1},
                    ", ".join(f"{k} {v}" for k, v in pk.items())))
    mk = extra["mount-ociup"]["requests"]["by_kind"]
    uploads = mk.get("PATCH", 0) + mk.get("PUT blob", 0) + mk.get("POST upload", 0)
    targets.append(("registry->registry: every blob mounted, no upload", uploads == 0 and mk.get("POST mount", 0) > 0,
                    ", ".join(f"{k} {v}" for k, v in mk.items())))

print()
print(f"machine: {env['MACHINE']} (at the end)  |  ociup {env['GIT_REV']} (--jobs {env['JOBS']})  |  {env['VERSIONS']}")
for img, info in infos.items():
    print(f"image {img}: {info['digest']}, config + {len(info['layers'])} layers, {info['blob_bytes'] / 1e6:.1f} MB of blobs")
print()
print(f"{'copy':<28} {'wall s':>7} {'MB/s':>7} {'RSS MiB':>8} {'cpu s':>6} {'reg cpu':>7} {'load':>5} {'reqs':>5}  requests")
for s in samples:
    print(f"{s['image'] + ' ' + s['direction'] + ' ' + s['tool'] + ' #' + str(s['round']):<28} {s['wall_s']:7.3f} "
          f"{s['mb_per_s']:7.1f} {s['peak_rss_kib'] / 1024:8.1f} {s['cpu_s']:6.2f} {s['registry_cpu_s']:7.2f} "
          f"{s['load_1min']:5.2f} {s['requests']['total']:5d}  "
          + ", ".join(f"{k} {v}" for k, v in s["requests"]["by_kind"].items()))
print()
print(f"medians over {env['RUNS']} rounds (tools interleaved, order rotated every round):")
hdr = (f"{'image':<6} {'dir':<5} {'tool':<7} {'wall s':>7} {'(min-max)':>15} {'MB/s':>7} {'RSS MiB':>8} "
       f"{'cpu s':>6} {'reg cpu':>7} {'load':>5} {'reqs':>5}")
print(hdr)
print("-" * len(hdr))
for key, t in summary.items():
    img, d, tool = key.split("/")
    rng = f"({t['wall_s_min']:.2f}-{t['wall_s_max']:.2f})"
    print(f"{img:<6} {d:<5} {tool:<7} {t['wall_s_median']:7.3f} {rng:>15} {t['mb_per_s_median']:7.1f} "
          f"{t['peak_rss_mib_max']:8.1f} {t['cpu_s_median']:6.2f} {t['registry_cpu_s_median']:7.2f} "
          f"{t['load_1min_median']:5.2f} {t['requests_median']:5g}")
print()
print("ratios (ociup throughput over the peer's, medians): "
      + ", ".join(f"{k.replace('/ociup_over_', ' vs ')} {v:.2f}x" for k, v in ratios.items()))
for name, e in extra.items():
    print(f"{name}: {e['wall_s']:.3f} s, {e['requests']['total']} requests: "
          + ", ".join(f"{k} {v}" for k, v in e["requests"]["by_kind"].items()))
print("targets:")
for name, ok, val in targets:
    print(f"  {'met    ' if ok else 'MISSED '} {name:<56} {val}")
print("correctness (manifests served with the image's digest, pulled blobs hash to their names, "
      "every push uploaded every blob): " + ("PASS" if not problems else "FAIL"))
for p in problems:
    print(f"  {p}")
with open(env["JSON_OUT"], "w") as f:
    json.dump({"benchmark": "copy-throughput", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": env["MACHINE"], "ociup_rev": env["GIT_REV"], "ociup_jobs": env["JOBS"],
               "versions": env["VERSIONS"], "runs": int(env["RUNS"]), "images": infos,
               "summary": summary, "ratios": ratios,
               "targets": {n: {"met": ok, "value": v} for n, ok, v in targets},
               "extra": extra, "correct": not problems, "problems": problems, "samples": samples}, f, indent=2)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
sys.exit(0 if not problems else 1)
PY
