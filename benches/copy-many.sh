#!/usr/bin/env bash
# Cost as work grows: `ociup copy` beside crane on two generated images with many parts, against a
# real registry (CNCF Distribution, `docker-registry serve`) on 127.0.0.1:
#   many    one image of BENCH_LAYERS (500) small layers (100 B to 20 KB of seeded bytes each)
#   multi   an index of BENCH_PLATFORMS (8) platforms, each an image of 3 small layers of its own
# Per round: a fresh registry on a new port; both images pushed to src/NAME:v1 (untimed, by
# ociup); then, tools interleaved (order rotated every round):
#   copy   ociup copy H/src/NAME:v1 H/ociup-R/NAME:v1     crane copy --insecure (same)
#          (one registry: every blob is mounted, the cost is in requests)
#   pull   ociup copy H/src/NAME:v1 oci:FRESH:v1          crane pull --insecure --format oci
# Per copy (`measure` of benches/lib.sh): wall time, peak RSS, client and registry CPU, and the
# requests from the registry's access log, by kind. Checks (exit status non-zero when one
# fails): every copy is served with the source's digest; every pulled blob hashes to its name.
# Targets (reported, never enforced): ociup at least as fast as crane on every image and
# direction (median wall), fewer or as many requests.
#
#   bash benches/copy-many.sh
#
# Settings: BENCH_RUNS (7), BENCH_LAYERS (500), BENCH_PLATFORMS (8), BENCH_SEED (20240601),
# BENCH_WORKDIR (kept; default a temp dir), BENCH_JSON (benches/results/copy-many.json),
# OCIUP, CRANE (as in copy-throughput.sh); OCIUP_B=PATH adds a second ociup binary as tool
# "ociup-b" (A/B runs: its ratio to crane is printed beside ociup's); BENCH_IMAGES ("many
# multi") and BENCH_DIRECTIONS ("copy pull") narrow the run.
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/benches/lib.sh"

RUNS=${BENCH_RUNS:-7}
LAYERS=${BENCH_LAYERS:-500}
PLATFORMS=${BENCH_PLATFORMS:-8}
SEED=${BENCH_SEED:-20240601}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/copy-many.json}
TAG=v1

bench_need python3 curl docker-registry sha256sum
bench_workdir ociup-copy-many
bench_ociup
[ -z "${OCIUP_B:-}" ] || [ -x "$OCIUP_B" ] || die "no ociup binary at $OCIUP_B"
IMAGES=(${BENCH_IMAGES:-many multi})
DIRECTIONS=(${BENCH_DIRECTIONS:-copy pull})
TOOLS=(ociup crane)
[ -z "${OCIUP_B:-}" ] || TOOLS+=(ociup-b)
CRANE=${CRANE:-$(command -v crane || echo "$HOME/.local/bin/crane")}
[ -x "$CRANE" ] || die "no crane at $CRANE (bash ../shared/peers/install.sh)"

# --- the images (layouts under $WORK/src-NAME, reused when made with the same settings) -------
key="$LAYERS $PLATFORMS $SEED $(sha256sum "$ROOT/benches/copy-many.sh" | cut -d' ' -f1)"
if [ "$(cat "$WORK/src.key" 2>/dev/null)" != "$key" ]; then
  log "generating the images"
  rm -rf "$WORK/src-many" "$WORK/src-multi" "$WORK/src.key"
  python3 - "$WORK" "$LAYERS" "$PLATFORMS" "$SEED" "$TAG" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
work, layers, platforms, seed, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

def layout(root):
    os.makedirs(os.path.join(root, "blobs", "sha256"))
    with open(os.path.join(root, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')

def put(root, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}

def layer(root, name, size, rnd):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        t.addfile(info, io.BytesIO(rnd.randbytes(size)))
    tar = buf.getvalue()
    desc = put(root, gzip.compress(tar, compresslevel=1, mtime=0))
    return dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **desc), \
        "sha256:" + hashlib.sha256(tar).hexdigest()

def image(root, n, arch, label):
    rnd = random.Random(f"{seed}-{label}")
    descs, diff_ids = [], []
    for i in range(n):
        d, diff = layer(root, f"{label}/f{i}", rnd.randint(100, 20_000), rnd)
        descs.append(d)
        diff_ids.append(diff)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}},
                        separators=(",", ":")).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(mediaType="application/vnd.oci.image.config.v1+json",
                                          **put(root, config)),
                           "layers": descs}, separators=(",", ":")).encode()
    return dict(mediaType="application/vnd.oci.image.manifest.v1+json", **put(root, manifest),
                platform={"architecture": arch, "os": "linux"})

def index_json(root, desc):
    desc = dict(desc, annotations={"org.opencontainers.image.ref.name": tag})
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [desc]}, f)

root = os.path.join(work, "src-many")
layout(root)
index_json(root, image(root, layers, "amd64", "many"))

root = os.path.join(work, "src-multi")
layout(root)
archs = ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le",
         "loong64", "mipsle"]
children = [image(root, 3, archs[i % len(archs)] if i < len(archs) else f"arch{i}", f"multi-{i}")
            for i in range(platforms)]
idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                  "manifests": children}, separators=(",", ":")).encode()
index_json(root, dict(mediaType="application/vnd.oci.image.index.v1+json", **put(root, idx)))
PY
  echo "$key" >"$WORK/src.key"
fi
declare -A DIGEST BLOBS
for img in many multi; do
  DIGEST[$img]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' \
    "$WORK/src-$img/index.json")
  BLOBS[$img]=$(find "$WORK/src-$img/blobs/sha256" -type f | wc -l)
done

# served_sha HOST/REPO:TAG: sha256 of the manifest or index as the registry serves it (curl).
served_sha() {
  local ref=$1 repo tag
  repo=${ref%:*} tag=${ref##*:}
  echo "sha256:$(curl -fsS -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' \
    "http://${repo%%/*}/v2/${repo#*/}/manifests/$tag" | sha256sum | cut -d' ' -f1)"
}
# check_pulled DIR: every blob hashes to its name, and the top document is there.
check_pulled() {
  local f n=0
  for f in "$1"/blobs/sha256/*; do
    [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$(basename "$f")" ] || { echo "$f does not hash to its name"; return; }
    n=$((n + 1))
  done
  [ -f "$1/blobs/sha256/${2#sha256:}" ] || { echo "no top document"; return; }
  echo "ok $n"
}

SAMPLES=$WORK/samples.tsv # id image direction tool round wall rss user sys ticks load check
: >"$SAMPLES"
rm -rf "$WORK/requests" "$WORK/out"

one() {
  local img=$1 direction=$2 tool=$3 round=$4 id=$2-$1-$3-$4 res check=ok load out=$WORK/pull-$3
  local src=$REG_HOST/src/$img:$TAG dst=$REG_HOST/$tool-$round/$img:$TAG
  rm -rf "$out"
  load=$(cut -d' ' -f1 /proc/loadavg)
  case $direction-$tool in
    copy-ociup) res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "$src" "$dst") ;;
    copy-crane) res=$(measure "$id" "$CRANE" copy --insecure "$src" "$dst") ;;
    copy-ociup-b) res=$(measure "$id" "$OCIUP_B" copy --insecure-registry "$REG_HOST" "$src" "$dst") ;;
    pull-ociup) res=$(measure "$id" "$OCIUP" copy --insecure-registry "$REG_HOST" "$src" "oci:$out:$TAG") ;;
    pull-ociup-b) res=$(measure "$id" "$OCIUP_B" copy --insecure-registry "$REG_HOST" "$src" "oci:$out:$TAG") ;;
    pull-crane) res=$(measure "$id" "$CRANE" pull --insecure --format oci "$src" "$out") ;;
  esac
  if [ "$direction" = copy ]; then
    [ "$(served_sha "$dst")" = "${DIGEST[$img]}" ] || check="served another digest"
  else
    check=$(check_pulled "$out" "${DIGEST[$img]}")
    rm -rf "$out"
  fi
  read -r wall rss user sys ticks <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$img" "$direction" "$tool" \
    "$round" "$wall" "$rss" "$user" "$sys" "$ticks" "$load" "$check" >>"$SAMPLES"
  log "  $(printf '%-5s %-4s %-7s round %-2s' "$img" "$direction" "$tool" "$round") ${wall}s" \
    "$((rss / 1024)) MiB  $(wc -l <"$WORK/requests/$id.log") requests  load $load  $check"
}

log "machine: $(bench_machine)"
log "images: many (${BLOBS[many]} blobs), multi (${BLOBS[multi]} blobs and documents); $RUNS rounds"
for ((round = 1; round <= RUNS; round++)); do
  [ -z "${REG_DIR:-}" ] || { stop_registry; rm -rf "$REG_DIR/data"; }
  start_registry "registry-$round"
  for img in "${IMAGES[@]}"; do
    "$OCIUP" copy --insecure-registry "$REG_HOST" "oci:$WORK/src-$img:$TAG" "$REG_HOST/src/$img:$TAG" \
      >/dev/null || die "pushing $img failed"
  done
  bench_rotate "$((round - 1))" "${TOOLS[@]}"
  for img in "${IMAGES[@]}"; do
    for direction in "${DIRECTIONS[@]}"; do
      for tool in "${ORDER[@]}"; do one "$img" "$direction" "$tool" "$round"; done
    done
  done
done
stop_registry

mkdir -p "$(dirname "$JSON_OUT")"
export SAMPLES JSON_OUT RUNS WORK GIT_REV=$(bench_git_rev) MACHINE="$(bench_machine)"
export CLK_TCK=$(getconf CLK_TCK) VERSIONS="crane $("$CRANE" version 2>/dev/null || echo -), $(docker-registry --version | awk '{ print $2, $3 }')"
python3 - <<'PY'
import collections, json, os, re, statistics as st, sys, time

env = os.environ
LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) ')


def kinds(sid):
    c = collections.Counter()
    for line in open(os.path.join(env["WORK"], "requests", sid + ".log")):
        m = LINE.match(line)
        if not m:
            c["unparsed"] += 1
            continue
        method, path = m.group(1), m.group(2).split("?")[0]
        what = ("mount" if "mount=" in m.group(2) else "upload") if "/blobs/uploads/" in path \
            else "blob" if "/blobs/" in path else "manifest" if "/manifests/" in path else "other"
        c[f"{method} {what}"] += 1
    return c


samples, problems = [], []
for l in open(env["SAMPLES"]).read().splitlines():
    sid, img, d, tool, rnd, wall, rss, user, sys_, ticks, load, check = l.split("\t")
    k = kinds(sid)
    samples.append({"id": sid, "image": img, "direction": d, "tool": tool, "round": int(rnd),
                    "wall_s": float(wall), "peak_rss_mib": int(rss) / 1024,
                    "cpu_s": round(float(user) + float(sys_), 2),
                    "registry_cpu_s": int(ticks) / int(env["CLK_TCK"]), "load_1min": float(load),
                    "requests": sum(k.values()), "by_kind": dict(sorted(k.items())), "check": check})
    if not check.startswith("ok"):
        problems.append(f"{sid}: {check}")

summary = {}
for s in samples:
    summary.setdefault((s["image"], s["direction"], s["tool"]), []).append(s)
print()
print(f"machine: {env['MACHINE']} (at the end)  |  ociup {env['GIT_REV']}  |  {env['VERSIONS']}")
print(f"medians over {env['RUNS']} rounds (tools interleaved):")
hdr = f"{'image':<6} {'dir':<5} {'tool':<7} {'wall s':>7} {'(min-max)':>13} {'cpu s':>6} {'reg cpu':>7} {'RSS MiB':>8} {'reqs':>6} {'load':>5}  requests (round 1)"
print(hdr)
print("-" * len(hdr))
out, targets = {}, []
for (img, d, tool), ss in summary.items():
    w = [s["wall_s"] for s in ss]
    t = {"runs": len(ss), "wall_s": w, "wall_s_median": st.median(w),
         "cpu_s_median": st.median(s["cpu_s"] for s in ss),
         "registry_cpu_s_median": st.median(s["registry_cpu_s"] for s in ss),
         "peak_rss_mib_max": max(s["peak_rss_mib"] for s in ss),
         "requests_median": st.median(s["requests"] for s in ss),
         "load_1min_median": st.median(s["load_1min"] for s in ss),
         "by_kind_round1": ss[0]["by_kind"]}
    out[f"{img}/{d}/{tool}"] = t
    print(f"{img:<6} {d:<5} {tool:<7} {t['wall_s_median']:7.3f} {'(' + format(min(w), '.2f') + '-' + format(max(w), '.2f') + ')':>13} "
          f"{t['cpu_s_median']:6.2f} {t['registry_cpu_s_median']:7.2f} {t['peak_rss_mib_max']:8.1f} "
          f"{t['requests_median']:6g} {t['load_1min_median']:5.2f}  "
          + ", ".join(f"{k} {v}" for k, v in t["by_kind_round1"].items()))
ratios = {}
for img in ("many", "multi"):
    for d in ("copy", "pull"):
        for tool in ("ociup", "ociup-b"):
            o, c = out.get(f"{img}/{d}/{tool}"), out.get(f"{img}/{d}/crane")
            if o and c:
                r = c["wall_s_median"] / o["wall_s_median"]
                ratios[f"{img}/{d}" + ("" if tool == "ociup" else "/ociup-b")] = r
                targets.append((f"{img} {d}: {tool} at least as fast as crane", r >= 1,
                                f"{r:.2f}x, {o['requests_median']:g} vs {c['requests_median']:g} requests"))
rss = max(s["peak_rss_mib"] for s in samples if s["tool"].startswith("ociup"))
targets.append(("ociup peak RSS < 64 MiB", rss < 64, f"{rss:.1f} MiB"))
print()
print("targets:")
for name, ok, val in targets:
    print(f"  {'met    ' if ok else 'MISSED '} {name:<40} {val}")
print("correctness (copies served with the source's digest, pulled blobs hash to their names): "
      + ("PASS" if not problems else "FAIL"))
for p in problems:
    print(f"  {p}")
with open(env["JSON_OUT"], "w") as f:
    json.dump({"benchmark": "copy-many", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": env["MACHINE"], "ociup_rev": env["GIT_REV"], "versions": env["VERSIONS"],
               "summary": out, "ratios_crane_over_ociup_wall": ratios,
               "targets": {n: {"met": ok, "value": v} for n, ok, v in targets},
               "problems": problems, "samples": samples}, f, indent=1)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
sys.exit(1 if problems else 0)
PY
