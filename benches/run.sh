#!/usr/bin/env bash
# `ociup unpack` and `ociup run` on a Debian root file system (debootstrap --variant=minbase
# bookworm, ~200 MB, made once and cached as a tar), against umoci and runc:
#
#   1. cold unpack: `ociup unpack` beside `umoci unpack` of the same image (gzip) and the floor,
#      `tar -xzf` of the same layer blob (GNU tar + gzip; and `tar -I pigz` when pigz is there),
#      interleaved, RUNS runs each (target: ociup at least 2x faster than umoci); each also
#      timed with the `sync` after it (the writeback it left), reported separately;
#   2. warm run: `ociup run --image ... -- /bin/true` with its layers cached beside `runc run` of
#      a bundle prepared beforehand (the same config.json and root file system), WARM_RUNS
#      each (target: ociup's overhead, the difference of the medians, under 50 ms);
#   3. peak memory (GNU time's %M) of ociup in both (target: under 64 MiB).
#
# Needs root (runc and umoci keep the layers' owners), umoci, runc, tar, python3, GNU time, and
# debootstrap with network to deb.debian.org the first time (or DEBIAN_TAR=path to a tar of a
# root file system). Prints a summary; JSON to benches/results/run.json. UNPACK_ONLY=1 skips the
# warm runs; OCIUP_BASELINE=PATH adds an older ociup binary to the unpack rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=${RUNS:-7}
WARM_RUNS=${WARM_RUNS:-15}
[ "$(id -u)" -eq 0 ] || die "run as root: runc and umoci unpack keep the layers' owners"
bench_need umoci runc tar python3
bench_ociup
bench_workdir ociup-run
log "machine: $(bench_machine)"

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/ociup-tests/debootstrap
TAR=${DEBIAN_TAR:-$CACHE/bookworm-minbase.tar}
if [ ! -f "$TAR" ]; then
  bench_need debootstrap
  log "debootstrap --variant=minbase bookworm (once; cached at $TAR)"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
  debootstrap --variant=minbase bookworm "$tmp/root" http://deb.debian.org/debian >"$tmp/log" 2>&1 \
    || die "debootstrap failed: $(tail -n 3 "$tmp/log")"
  tar --numeric-owner --xattrs --exclude='./dev/*' -C "$tmp/root" -cf "$tmp/rootfs.tar" .
  mv "$tmp/rootfs.tar" "$TAR"
  rm -rf "$tmp"
fi

LAY=$WORK/lay
mkdir -p "$WORK/root"
tar --numeric-owner --xattrs -xpf "$TAR" -C "$WORK/root"
"$OCIUP" append --base scratch --add "$WORK/root:/" --keep-owner --to "oci:$LAY:debian" >/dev/null
rm -rf "$WORK/root"
IMAGE_BYTES=$(du -sb "$LAY/blobs" | cut -f1)
log "image: $IMAGE_BYTES bytes of blobs in $LAY"
export XDG_DATA_HOME=$WORK/data

# timed ID CMD...: runs CMD under GNU time (stdin from /dev/null, output to $WORK/out/ID.*);
# prints "wall_s rss_kib". `sync` first, untimed.
timed() {
  local id=$1 n0 n1
  shift
  mkdir -p "$WORK/out"
  sync
  n0=$(date +%s%N)
  /usr/bin/time -f '%M' -o "$WORK/out/$id.time" "$@" </dev/null >"$WORK/out/$id.out" 2>"$WORK/out/$id.err" \
    || die "$id failed: $* ($(tail -n 5 "$WORK/out/$id.err"))"
  n1=$(date +%s%N)
  echo "$(awk -v a="$n0" -v b="$n1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }') $(tail -n 1 "$WORK/out/$id.time")"
}

declare -A WALL RSS SYNCED
add() { WALL[$1]+="${2} "; RSS[$1]+="${3} "; }

# The layer blob itself, for the floor: what tar alone does with it.
BLOB=$LAY/blobs/$(python3 -c 'import json,sys
d = sys.argv[1]
m = json.load(open(d + "/index.json"))["manifests"][0]["digest"].replace(":", "/")
print(json.load(open(d + "/blobs/" + m))["layers"][0]["digest"].replace(":", "/"))' "$LAY")
FLOOR=(tar-gzip)
command -v pigz >/dev/null && FLOOR+=(tar-pigz)
TOOLS=(ociup umoci "${FLOOR[@]}")
# OCIUP_BASELINE=path: an older ociup binary in the same rounds too (before/after a change).
[ -n "${OCIUP_BASELINE:-}" ] && TOOLS+=(ociup-baseline)

log "cold unpack: $RUNS runs each of ${TOOLS[*]}, interleaved"
for ((i = 0; i < RUNS; i++)); do
  bench_rotate "$i" "${TOOLS[@]}"
  for tool in "${ORDER[@]}"; do
    dir=$WORK/unpack-$tool-$i
    case $tool in
      ociup) read -r w r < <(timed "unpack-ociup-$i" "$OCIUP" unpack "oci:$LAY:debian" "$dir") ;;
      umoci) read -r w r < <(timed "unpack-umoci-$i" umoci unpack --image "$LAY:debian" "$dir") ;;
      ociup-baseline) read -r w r < <(timed "unpack-$tool-$i" "$OCIUP_BASELINE" unpack "oci:$LAY:debian" "$dir") ;;
      tar-gzip)
        mkdir -p "$dir"
        read -r w r < <(timed "unpack-$tool-$i" tar --numeric-owner -xzpf "$BLOB" -C "$dir") ;;
      tar-pigz)
        mkdir -p "$dir"
        read -r w r < <(timed "unpack-$tool-$i" tar --numeric-owner -I pigz -xpf "$BLOB" -C "$dir") ;;
    esac
    # The writeback the tool left, timed on its own (not in the wall figure above).
    s0=$(date +%s%N)
    sync
    s1=$(date +%s%N)
    SYNCED[unpack-$tool]+="$(awk -v a="$s0" -v b="$s1" -v w="$w" 'BEGIN { printf "%.4f", w + (b - a) / 1e9 }') "
    add "unpack-$tool" "$w" "$r"
    log "  round $((i + 1)) $tool: ${w} s ($(uptime | sed 's/.*load/load/'))"
    rm -rf "$dir"
  done
done

if [ "${UNPACK_ONLY:-0}" = 1 ]; then
  median() { bench_median $1; }
  {
    echo "machine: $(bench_machine); ociup $(bench_git_rev); RUNS=$RUNS"
    for tool in "${TOOLS[@]}"; do
      echo "unpack $tool: median $(median "${WALL[unpack-$tool]}") s, with the sync after it \
$(median "${SYNCED[unpack-$tool]}") s (runs: ${WALL[unpack-$tool]})"
    done
    awk -v o="$(median "${WALL[unpack-ociup]}")" -v u="$(median "${WALL[unpack-umoci]}")" \
      -v f="$(median "${WALL[unpack-tar-gzip]}")" \
      'BEGIN { printf "umoci/ociup %.2fx; ociup/floor(tar-gzip) %.2fx\n", u / o, o / f }'
  } | tee "$WORK/unpack-summary.txt"
  exit 0
fi

log "warm run: fill the cache, prepare the runc bundle"
"$OCIUP" run --image "oci:$LAY:debian" -- /bin/true </dev/null
"$OCIUP" run --image "oci:$LAY:debian" --dry-run -- /bin/true </dev/null >"$WORK/dry.json"
mkdir -p "$WORK/bundle" "$WORK/runc-state"
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"))' \
  "$WORK/dry.json" "$WORK/bundle/config.json"
log "warm run: $WARM_RUNS runs each, interleaved"
for ((i = 0; i < WARM_RUNS; i++)); do
  bench_rotate "$i" ociup runc
  for tool in "${ORDER[@]}"; do
    case $tool in
      ociup) read -r w r < <(timed "run-ociup-$i" "$OCIUP" run --image "oci:$LAY:debian" -- /bin/true) ;;
      runc) read -r w r < <(timed "run-runc-$i" runc --root "$WORK/runc-state" run --bundle "$WORK/bundle" "bench-$i") ;;
    esac
    add "run-$tool" "$w" "$r"
  done
done
CACHE_BYTES=$(du -sb "$XDG_DATA_HOME/ociup/rootfs-cache" | cut -f1)

median() { bench_median $1; }
max() { printf '%s\n' $1 | sort -g | tail -n 1; }
U_O=$(median "${WALL[unpack-ociup]}")
U_U=$(median "${WALL[unpack-umoci]}")
R_O=$(median "${WALL[run-ociup]}")
R_R=$(median "${WALL[run-runc]}")
RSS_U=$(max "${RSS[unpack-ociup]}")
RSS_R=$(max "${RSS[run-ociup]}")
RSS_UMOCI=$(max "${RSS[unpack-umoci]}")
LOAD=$(bench_load)

mkdir -p benches/results
U_O=$U_O U_U=$U_U R_O=$R_O R_R=$R_R RSS_U=$RSS_U RSS_R=$RSS_R RSS_UMOCI=$RSS_UMOCI \
  MACHINE="$(bench_machine)" LOAD="$LOAD" REV="$(bench_git_rev)" RUNS=$RUNS WARM_RUNS=$WARM_RUNS \
  IMAGE_BYTES=$IMAGE_BYTES CACHE_BYTES=$CACHE_BYTES \
  ALL_UO="${WALL[unpack-ociup]}" ALL_UU="${WALL[unpack-umoci]}" \
  ALL_RO="${WALL[run-ociup]}" ALL_RR="${WALL[run-runc]}" \
  python3 - <<'PY'
import json, os, time
e = os.environ
f = lambda k: float(e[k])
speedup = f("U_U") / f("U_O")
overhead_ms = (f("R_O") - f("R_R")) * 1000
peak_mib = max(f("RSS_U"), f("RSS_R")) / 1024
targets = {
    "unpack at least 2x faster than umoci": (speedup >= 2, f"{speedup:.2f}x"),
    "run overhead under 50 ms (median)": (overhead_ms < 50, f"{overhead_ms:.1f} ms"),
    "peak memory under 64 MiB": (peak_mib < 64, f"{peak_mib:.1f} MiB"),
}
print(f"machine: {e['MACHINE']}; load after: {e['LOAD']}; ociup {e['REV']}")
print(f"image: {int(e['IMAGE_BYTES'])/1e6:.0f} MB of blobs (gzip); layer cache after: "
      f"{int(e['CACHE_BYTES'])/1e6:.0f} MB")
print(f"cold unpack ({e['RUNS']} runs): ociup {f('U_O'):.3f} s, umoci {f('U_U'):.3f} s "
      f"(median), ratio {speedup:.2f}x; peak RSS ociup {f('RSS_U')/1024:.1f} MiB, "
      f"umoci {f('RSS_UMOCI')/1024:.1f} MiB")
print(f"warm run ({e['WARM_RUNS']} runs): ociup run {f('R_O')*1000:.1f} ms, runc run "
      f"{f('R_R')*1000:.1f} ms (median): overhead {overhead_ms:.1f} ms; peak RSS ociup "
      f"{f('RSS_R')/1024:.1f} MiB")
for name, (ok, val) in targets.items():
    print(f"  {'met    ' if ok else 'MISSED '} {name:<40} {val}")
out = {
    "benchmark": "run", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": e["MACHINE"], "load_after": e["LOAD"], "ociup_rev": e["REV"],
    "image_bytes": int(e["IMAGE_BYTES"]), "cache_bytes": int(e["CACHE_BYTES"]),
    "unpack_s": {"ociup": [float(x) for x in e["ALL_UO"].split()],
                 "umoci": [float(x) for x in e["ALL_UU"].split()]},
    "run_s": {"ociup": [float(x) for x in e["ALL_RO"].split()],
              "runc": [float(x) for x in e["ALL_RR"].split()]},
    "medians": {"unpack_ociup": f("U_O"), "unpack_umoci": f("U_U"),
                "run_ociup": f("R_O"), "run_runc": f("R_R")},
    "peak_rss_kib": {"unpack_ociup": int(e["RSS_U"]), "unpack_umoci": int(e["RSS_UMOCI"]),
                     "run_ociup": int(e["RSS_R"])},
    "targets": {n: {"met": ok, "value": v} for n, (ok, v) in targets.items()},
}
with open("benches/results/run.json", "w") as fh:
    json.dump(out, fh, indent=1)
    fh.write("\n")
print("JSON summary: benches/results/run.json")
PY
