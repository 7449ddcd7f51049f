#!/usr/bin/env bash
# Layer throughput benchmark: `ociup layer create` against `tar | gzip -6` and `tar | pigz -6`
# on one generated tree (20,005 files, ~280 MB; a 294 MB tar stream), then a determinism check
# across --threads.
#
#   bash benches/layer-throughput.sh            # from the repository root (or from anywhere)
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=5          timed runs per tool, interleaved round-robin
#   BENCH_LEVEL=6         gzip level for all three tools
#   BENCH_JSON=PATH       JSON summary (default benches/results/layer-throughput.json)
#   BENCH_WORKDIR=DIR     where the tree and outputs go; kept, and the tree reused on the next run
#                         when it was generated with the same settings (default: a temp dir under
#                         $TMPDIR, removed at exit)
#   BENCH_TREE=DIR        benchmark this existing directory instead of generating one
#   BENCH_SEED=20240601   generator seed;  BENCH_SMALL_FILES=20000  number of small files;
#   BENCH_LARGE_SCALE=1   multiplies the size of the 5 large files (100 MiB in all)
#   OCIUP=PATH            ociup binary to test (default: builds target/release/ociup with cargo)
#
# Wall time is taken with `date +%s.%N` around each command (the whole pipeline for tar | gzip),
# peak RSS with GNU time's %M: the compressor's for the pipelines, the whole process for ociup.
# Throughput is the size of the uncompressed (GNU) tar stream divided by the wall time, in MB/s
# (10^6 bytes). Targets are reported, never enforced; the exit status is non-zero only when a
# tool fails, the ociup outputs differ across thread counts or runs, or the layer does not unpack.
set -euo pipefail
shopt -s inherit_errexit # a failing command inside $(...) stops the script too

cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=${BENCH_RUNS:-5}
LEVEL=${BENCH_LEVEL:-6}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/layer-throughput.json}
SEED=${BENCH_SEED:-20240601}
SMALL_FILES=${BENCH_SMALL_FILES:-20000}
LARGE_SCALE=${BENCH_LARGE_SCALE:-1}
NPROC=$(nproc)
TOOLS=(gzip pigz ociup)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites ---------------------------------------------------------------------------
for tool in tar gzip pigz python3 sha256sum; do
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

# --- work directory and tree -----------------------------------------------------------------
if [ -n "${BENCH_WORKDIR:-}" ]; then
  WORK=$BENCH_WORKDIR
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ociup-bench.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
OUT=$WORK/out
rm -rf "$OUT" && mkdir -p "$OUT"

if [ -n "${BENCH_TREE:-}" ]; then
  TREE=$(cd "$BENCH_TREE" && pwd)
  TREE_INFO='{"generated": false}'
else
  TREE=$WORK/tree
  STAMP=$WORK/tree.json # the generator's summary, written once the tree is complete
  # The tree is reused only if it was made by this generator with these settings.
  key="$SEED $SMALL_FILES $LARGE_SCALE $(sha256sum "$ROOT/benches/gen-tree.py" | cut -d' ' -f1)"
  if [ -d "$TREE" ] && [ -f "$STAMP" ] && [ "$(cat "$WORK/tree.key" 2>/dev/null)" = "$key" ]; then
    log "reusing tree $TREE"
  else
    log "generating tree in $TREE (seed $SEED, $SMALL_FILES small files + 5 large)"
    rm -rf "$TREE" "$STAMP"
    python3 "$ROOT/benches/gen-tree.py" "$TREE" --seed "$SEED" --small "$SMALL_FILES" \
      --large-scale "$LARGE_SCALE" >"$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
    echo "$key" >"$WORK/tree.key"
  fi
  TREE_INFO=$(cat "$STAMP")
fi

# GNU tar in the same order ociup writes (sorted names); this keeps the output-size comparison
# like for like and costs nothing measurable.
TAR=(tar --sort=name -C "$TREE" -cf - .)

# Warm the page cache and measure the input at once. (Not `tar -cf /dev/null`: GNU tar notices
# /dev/null and skips reading file contents.)
log "warming the page cache"
TAR_BYTES=$("${TAR[@]}" | wc -c)
FILE_COUNT=$(find "$TREE" -type f | wc -l)

# --- timed runs ------------------------------------------------------------------------------
SAMPLES=$WORK/samples.tsv # tool run wall_s peak_rss_kib out_bytes sha256
: >"$SAMPLES"

# run_tool TOOL OUTFILE [extra ociup args...]: runs one tool once, prints "wall_s rss_kib".
run_tool() {
  local tool=$1 out=$2 t0 t1
  shift 2
  rm -f "$out"
  sync # do not let the previous run's write-back overlap this one
  t0=$(date +%s.%N)
  case $tool in
  gzip) "${TAR[@]}" | /usr/bin/time -f %M -o "$WORK/rss" gzip "-$LEVEL" >"$out" ;;
  pigz) "${TAR[@]}" | /usr/bin/time -f %M -o "$WORK/rss" pigz "-$LEVEL" -p "$NPROC" >"$out" ;;
  ociup)
    /usr/bin/time -f %M -o "$WORK/rss" \
      "$OCIUP" layer create "$TREE" -o "$out" --level "$LEVEL" "$@" >/dev/null
    ;;
  esac
  t1=$(date +%s.%N)
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $(tail -n 1 "$WORK/rss")"
}

log "timing $RUNS runs of each of ${TOOLS[*]} (level $LEVEL, $NPROC cores), round-robin"
for ((run = 1; run <= RUNS; run++)); do
  # Rotate the starting tool every round so no tool always runs first or last.
  for ((k = 0; k < ${#TOOLS[@]}; k++)); do
    tool=${TOOLS[(run + k) % ${#TOOLS[@]}]}
    out=$OUT/$tool.tar.gz
    res=$(run_tool "$tool" "$out")
    read -r wall rss <<<"$res"
    sum=$(sha256sum "$out" | cut -d' ' -f1)
    printf '%s\t%d\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$wall" "$rss" "$(stat -c %s "$out")" "$sum" \
      >>"$SAMPLES"
    log "  run $run/$RUNS $(printf '%-5s' "$tool") ${wall}s  ${rss} KiB"
  done
done

# --- determinism across thread counts (timed once each, for diagnosis) -----------------------
log "determinism: ociup --threads 1, --threads 2, default; and --compression none once"
DET=$WORK/determinism.tsv # label wall rss bytes sha256
: >"$DET"
for variant in "threads=1" "threads=2" "default" "none"; do
  case $variant in
  threads=*) args=(--threads "${variant#threads=}") ;;
  default) args=() ;;
  none) args=(--compression none) ;;
  esac
  out=$OUT/ociup-$variant.tar$([ "$variant" = none ] || echo .gz)
  res=$(run_tool ociup "$out" "${args[@]}")
  read -r wall rss <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\n' "$variant" "$wall" "$rss" "$(stat -c %s "$out")" \
    "$(sha256sum "$out" | cut -d' ' -f1)" >>"$DET"
  log "  ociup $(printf '%-9s' "$variant") ${wall}s  ${rss} KiB"
done

# Sanity: the ociup layer unpacks to as many regular files (or hard links) as the tree has.
LAYER_FILES=$(gzip -dc "$OUT/ociup.tar.gz" | tar -tvf - | grep -c '^[-h]' || true)

# --- report ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
MEM_KIB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# (--no-optional-locks: read-only, never touches the index of a checkout someone is working in)
if [ -n "$(git -C "$ROOT" --no-optional-locks status --porcelain -uno 2>/dev/null || true)" ]; then
  GIT_REV+="-dirty"
fi

export SAMPLES DET JSON_OUT TAR_BYTES FILE_COUNT LAYER_FILES NPROC LEVEL RUNS GIT_REV TREE
export CPU="${CPU:-unknown}" MEM_KIB TREE_INFO
export VERSIONS="gzip $(gzip --version | head -n1 | awk '{ print $2 }'), $(pigz --version 2>&1),\
 tar $(tar --version | head -n1 | awk '{ print $NF }')"
python3 - <<'PY'
import json, os, statistics as st, sys, time

env = os.environ
tar_bytes = int(env["TAR_BYTES"])
rows = [l.split("\t") for l in open(env["SAMPLES"]).read().splitlines()]
det = [l.split("\t") for l in open(env["DET"]).read().splitlines()]
names = {"gzip": f"tar | gzip -{env['LEVEL']}",
         "pigz": f"tar | pigz -{env['LEVEL']} -p {env['NPROC']}",
         "ociup": f"ociup layer create --level {env['LEVEL']}"}

tools = {}
for tool in ("gzip", "pigz", "ociup"):
    r = [x for x in rows if x[0] == tool]
    walls = [float(x[2]) for x in r]
    rss = [int(x[3]) for x in r]
    sizes = sorted({int(x[4]) for x in r})
    tools[tool] = {
        "command": names[tool],
        "runs": len(r),
        "wall_s": walls,
        "wall_s_median": st.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "mb_per_s_median": tar_bytes / st.median(walls) / 1e6,
        "peak_rss_kib": rss,
        "peak_rss_kib_median": st.median(rss),
        "output_bytes": sizes[-1],
        "output_sizes_stable": len(sizes) == 1,
        "output_sha256": sorted({x[5] for x in r}),
    }

g, p, o = tools["gzip"], tools["pigz"], tools["ociup"]
ratios = {
    "ociup_vs_gzip_throughput": o["mb_per_s_median"] / g["mb_per_s_median"],
    "ociup_vs_pigz_throughput": o["mb_per_s_median"] / p["mb_per_s_median"],
    "ociup_vs_gzip_size_pct": (o["output_bytes"] / g["output_bytes"] - 1) * 100,
    "pigz_vs_gzip_throughput": p["mb_per_s_median"] / g["mb_per_s_median"],
}
rss_mib = o["peak_rss_kib_median"] / 1024
targets = [
    ("throughput >= 3x gzip -6", ratios["ociup_vs_gzip_throughput"] >= 3,
     f"{ratios['ociup_vs_gzip_throughput']:.2f}x"),
    ("throughput >= 1.5x pigz -6", ratios["ociup_vs_pigz_throughput"] >= 1.5,
     f"{ratios['ociup_vs_pigz_throughput']:.2f}x"),
    ("output <= 3% larger than gzip -6", ratios["ociup_vs_gzip_size_pct"] <= 3,
     f"{ratios['ociup_vs_gzip_size_pct']:+.2f}%"),
    ("peak RSS < 64 MiB", rss_mib < 64, f"{rss_mib:.1f} MiB"),
]

variants = {v: {"wall_s": float(w), "mb_per_s": tar_bytes / float(w) / 1e6,
                "peak_rss_kib": int(r), "output_bytes": int(b), "sha256": s}
            for v, w, r, b, s in det}
gz_shas = {variants[v]["sha256"] for v in ("threads=1", "threads=2", "default")}
gz_shas |= set(o["output_sha256"])
deterministic = len(gz_shas) == 1
unpack_ok = int(env["LAYER_FILES"]) == int(env["FILE_COUNT"])

machine = {"nproc": int(env["NPROC"]), "cpu": env["CPU"],
           "mem_gib": round(int(env["MEM_KIB"]) / 1048576, 1)}

# ---- printed report
print()
print(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['mem_gib']} GiB RAM"
      f"  |  ociup {env['GIT_REV']}  |  {env['VERSIONS']}")
print(f"input:   {int(env['FILE_COUNT'])} files, tar stream {tar_bytes} bytes "
      f"({tar_bytes / 1e6:.1f} MB), gzip -{env['LEVEL']} ratio "
      f"{tar_bytes / g['output_bytes']:.2f}x; {env['RUNS']} runs per tool, medians")
print()
hdr = f"{'tool':<30} {'wall s':>7} {'(min-max)':>13} {'MB/s':>7} {'output bytes':>13} {'vs gzip':>8} {'peak RSS':>10}"
print(hdr)
print("-" * len(hdr))
for t in tools.values():
    print(f"{t['command']:<30} {t['wall_s_median']:7.2f} "
          f"{'(' + format(t['wall_s_min'], '.2f') + '-' + format(t['wall_s_max'], '.2f') + ')':>13} "
          f"{t['mb_per_s_median']:7.1f} {t['output_bytes']:13d} "
          f"{(t['output_bytes'] / g['output_bytes'] - 1) * 100:+7.2f}% "
          f"{t['peak_rss_kib_median'] / 1024:6.1f} MiB")
print()
print("single ociup runs (diagnostics):")
for v, d in variants.items():
    label = "--compression none" if v == "none" else ("default threads" if v == "default" else f"--{v.replace('=', ' ')}")
    print(f"  {label:<20} {d['wall_s']:7.2f} s {d['mb_per_s']:7.1f} MB/s "
          f"{d['peak_rss_kib'] / 1024:6.1f} MiB  {d['output_bytes']} bytes  {d['sha256'][:16]}")
print()
print(f"ratios:  ociup/gzip throughput {ratios['ociup_vs_gzip_throughput']:.2f}x, "
      f"ociup/pigz throughput {ratios['ociup_vs_pigz_throughput']:.2f}x, "
      f"ociup output vs gzip {ratios['ociup_vs_gzip_size_pct']:+.2f}% "
      f"(pigz/gzip throughput {ratios['pigz_vs_gzip_throughput']:.2f}x)")
print("targets:")
for name, ok, val in targets:
    print(f"  {'met    ' if ok else 'MISSED '} {name:<34} {val}")
print(f"determinism (threads 1 / 2 / default, {len(o['output_sha256'])} distinct sha256 over "
      f"{o['runs']} timed runs): {'PASS' if deterministic else 'FAIL'}"
      + ("" if deterministic else f"  {sorted(gz_shas)}"))
print(f"layer unpacks to {env['LAYER_FILES']} regular files (tree has {env['FILE_COUNT']}): "
      f"{'PASS' if unpack_ok else 'FAIL'}")

summary = {
    "benchmark": "layer-throughput",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": machine,
    "ociup_rev": env["GIT_REV"],
    "versions": env["VERSIONS"],
    "level": int(env["LEVEL"]),
    "runs": int(env["RUNS"]),
    "tree": {"path": env["TREE"], "files": int(env["FILE_COUNT"]), "tar_bytes": tar_bytes,
             "generator": json.loads(env["TREE_INFO"])},
    "tools": tools,
    "ratios": ratios,
    "targets": {name: {"met": ok, "value": val} for name, ok, val in targets},
    "ociup_variants": variants,
    "deterministic": deterministic,
    "layer_unpacks": unpack_ok,
}
with open(env["JSON_OUT"], "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
print(f"\nJSON summary: {env['JSON_OUT']}")
sys.exit(0 if deterministic and unpack_ok else 1)
PY
