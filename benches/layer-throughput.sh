#!/usr/bin/env bash
# Layer throughput benchmark: `ociup layer create` against `tar | gzip -6` and `tar | pigz -6`
# on one tree, tools interleaved run by run, then a determinism check across --threads.
#
#   bash benches/layer-throughput.sh            # from the repository root (or from anywhere)
#
# The tree (BENCH_INPUT): `debian` (the default), a Debian root file system made by
# `debootstrap --variant=minbase bookworm`, taken from the tar the test suite caches in
# $XDG_CACHE_HOME/ociup-tests/debootstrap/bookworm-minbase.tar (~/.cache without it; made here
# once, as the tests make it, when missing: root, debootstrap and deb.debian.org needed) and
# extracted into the work directory; or `generated`, benches/gen-tree.py's seeded tree (20,005
# files, ~280 MB, no network). BENCH_TREE=DIR benchmarks an existing directory instead.
#
# Settings (environment variables, all optional):
#   BENCH_RUNS=7          timed runs per tool, interleaved (at least 7 for the medians)
#   BENCH_LEVEL=6         gzip level for all three tools
#   BENCH_INPUT=debian    debian | generated
#   BENCH_JSON=PATH       JSON summary (default benches/results/layer-throughput.json)
#   BENCH_WORKDIR=DIR     where the tree and outputs go; kept, and the tree reused on the next run
#                         when it was made with the same settings (default: a temp dir under
#                         $TMPDIR, removed at exit)
#   BENCH_TREE=DIR        benchmark this existing directory instead
#   BENCH_SEED=20240601   generator seed;  BENCH_SMALL_FILES=20000  number of small files;
#   BENCH_LARGE_SCALE=1   multiplies the size of the 5 large files (100 MiB in all)
#   OCIUP=PATH            ociup binary to test (default: builds target/release/ociup); copied into
#                         the work directory first, so a concurrent cargo build cannot swap it
#
# Wall time is taken with `date +%s%N` around each command (the whole pipeline for tar | gzip),
# peak RSS with GNU time's %M: the compressor's for the pipelines, the whole process for ociup;
# CPU time (user + system) of the compressor and of ociup too, and the 1-minute load before each
# run (the machine is shared). Throughput is the size of the uncompressed (GNU) tar stream
# divided by the wall time, in MB/s (10^6 bytes). Targets are reported, never enforced; the exit
# status is non-zero only when a tool fails, the ociup outputs differ across thread counts or
# runs, or the layer does not unpack to the tree's files.
set -euo pipefail
shopt -s inherit_errexit # a failing command inside $(...) stops the script too

cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/benches/lib.sh"

RUNS=${BENCH_RUNS:-7}
LEVEL=${BENCH_LEVEL:-6}
INPUT=${BENCH_INPUT:-debian}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/layer-throughput.json}
SEED=${BENCH_SEED:-20240601}
SMALL_FILES=${BENCH_SMALL_FILES:-20000}
LARGE_SCALE=${BENCH_LARGE_SCALE:-1}
NPROC=$(nproc)
TOOLS=(gzip pigz ociup)

# --- prerequisites ---------------------------------------------------------------------------
bench_need tar gzip pigz python3 sha256sum
bench_ociup
bench_workdir ociup-layer-bench
cp "$OCIUP" "$WORK/ociup.bin"
OCIUP_SRC=$OCIUP
OCIUP=$WORK/ociup.bin
OUT=$WORK/out
rm -rf "$OUT" && mkdir -p "$OUT"

# --- the tree --------------------------------------------------------------------------------
# debian_tar: the cached debootstrap tar (made as the test suite makes it when missing).
debian_tar() {
  local cache tar part
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/ociup-tests/debootstrap
  tar=$cache/bookworm-minbase.tar
  if [ ! -f "$tar" ]; then
    [ "$(id -u)" = 0 ] || die "no $tar, and debootstrap needs root to make it (or BENCH_INPUT=generated)"
    command -v debootstrap >/dev/null || die "no $tar and no debootstrap (apt-get install -y debootstrap)"
    log "making $tar with debootstrap (once; fetches from deb.debian.org)"
    mkdir -p "$cache"
    part=$(mktemp -d "$cache/bench.XXXXXX")
    debootstrap --variant=minbase bookworm "$part/root" http://deb.debian.org/debian >"$part/log" 2>&1 \
      || die "debootstrap failed: $(tail -n 3 "$part/log")"
    tar --numeric-owner --xattrs --exclude='./dev/*' -C "$part/root" -cf "$part/rootfs.tar" .
    mv "$part/rootfs.tar" "$tar"
    rm -rf "$part"
  fi
  echo "$tar"
}

if [ -n "${BENCH_TREE:-}" ]; then
  TREE=$(cd "$BENCH_TREE" && pwd)
  TREE_INFO='{"kind": "given"}'
elif [ "$INPUT" = debian ]; then
  SRC_TAR=$(debian_tar)
  TREE=$WORK/debian
  key="$(stat -c '%s %Y' "$SRC_TAR") $(id -u)"
  if [ -d "$TREE" ] && [ "$(cat "$WORK/debian.key" 2>/dev/null)" = "$key" ]; then
    log "reusing tree $TREE"
  else
    log "extracting $SRC_TAR into $TREE"
    rm -rf "$TREE" "$WORK/debian.key" && mkdir -p "$TREE"
    tar --numeric-owner -xpf "$SRC_TAR" -C "$TREE"
    echo "$key" >"$WORK/debian.key"
  fi
  TREE_INFO=$(printf '{"kind": "debian", "source": "debootstrap --variant=minbase bookworm", "tar": "%s", "tar_bytes": %s}' \
    "$SRC_TAR" "$(stat -c %s "$SRC_TAR")")
elif [ "$INPUT" = generated ]; then
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
  TREE_INFO=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["kind"] = "generated"; print(json.dumps(d))' "$STAMP")
else
  die "BENCH_INPUT is debian or generated, not $INPUT"
fi

# GNU tar in the same order ociup writes (sorted names), numeric owners; this keeps the
# output-size comparison like for like and costs nothing measurable.
TAR=(tar --sort=name --numeric-owner -C "$TREE" -cf - .)

# Warm the page cache and measure the input at once. (Not `tar -cf /dev/null`: GNU tar notices
# /dev/null and skips reading file contents.)
log "warming the page cache"
TAR_BYTES=$("${TAR[@]}" | wc -c)
FILE_COUNT=$(find "$TREE" -type f | wc -l)
LOAD_START=$(bench_load)

# --- timed runs ------------------------------------------------------------------------------
SAMPLES=$WORK/samples.tsv # tool run wall_s peak_rss_kib out_bytes sha256 cpu_s load1
: >"$SAMPLES"

# run_tool TOOL OUTFILE [extra ociup args...]: runs one tool once, prints
# "wall_s rss_kib cpu_s load1" (the compressor's RSS and CPU for the pipelines, tar's not counted).
run_tool() {
  local tool=$1 out=$2 t0 t1 load
  shift 2
  rm -f "$out"
  sync # do not let the previous run's write-back overlap this one
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s%N)
  case $tool in
  gzip) "${TAR[@]}" | /usr/bin/time -f '%M %U %S' -o "$WORK/rss" gzip "-$LEVEL" >"$out" ;;
  pigz) "${TAR[@]}" | /usr/bin/time -f '%M %U %S' -o "$WORK/rss" pigz "-$LEVEL" -p "$NPROC" >"$out" ;;
  ociup)
    /usr/bin/time -f '%M %U %S' -o "$WORK/rss" \
      "$OCIUP" layer create "$TREE" -o "$out" --level "$LEVEL" "$@" >/dev/null
    ;;
  esac
  t1=$(date +%s%N)
  read -r rss user sys <<<"$(tail -n 1 "$WORK/rss")"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') $rss $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') $load"
}

log "timing $RUNS runs of each of ${TOOLS[*]} (level $LEVEL, $NPROC cores), round-robin"
for ((run = 1; run <= RUNS; run++)); do
  # Rotate the starting tool every round so no tool always runs first or last.
  bench_rotate "$run" "${TOOLS[@]}"
  for tool in "${ORDER[@]}"; do
    out=$OUT/$tool.tar.gz
    res=$(run_tool "$tool" "$out")
    read -r wall rss cpu load <<<"$res"
    sum=$(sha256sum "$out" | cut -d' ' -f1)
    printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$wall" "$rss" "$(stat -c %s "$out")" "$sum" \
      "$cpu" "$load" >>"$SAMPLES"
    log "  run $run/$RUNS $(printf '%-5s' "$tool") ${wall}s  cpu ${cpu}s  ${rss} KiB  load $load"
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
  read -r wall rss _ _ <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\n' "$variant" "$wall" "$rss" "$(stat -c %s "$out")" \
    "$(sha256sum "$out" | cut -d' ' -f1)" >>"$DET"
  log "  ociup $(printf '%-9s' "$variant") ${wall}s  ${rss} KiB"
done

# Sanity: the ociup layer unpacks to as many regular files (or hard links) as the tree has.
LAYER_FILES=$(gzip -dc "$OUT/ociup.tar.gz" | tar -tvf - | grep -c '^[-h]' || true)

# --- report ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$JSON_OUT")"
MACHINE=$(bench_machine)
LOAD_END=$(bench_load)
GIT_REV=$(bench_git_rev)

export SAMPLES DET JSON_OUT TAR_BYTES FILE_COUNT LAYER_FILES NPROC LEVEL RUNS GIT_REV TREE
export MACHINE LOAD_START LOAD_END TREE_INFO OCIUP_SRC
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
    cpu = [float(x[6]) for x in r]
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
        "cpu_s": cpu,
        "cpu_s_median": st.median(cpu),
        "load1_before": [float(x[7]) for x in r],
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
    # Load-independent: how much CPU each spends on the same input (tar's own not counted).
    "pigz_cpu_over_ociup_cpu": p["cpu_s_median"] / o["cpu_s_median"],
    "gzip_cpu_over_ociup_cpu": g["cpu_s_median"] / o["cpu_s_median"],
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

machine = {"description": env["MACHINE"], "nproc": int(env["NPROC"]),
           "loadavg_start": env["LOAD_START"], "loadavg_end": env["LOAD_END"]}
loads = [float(x[7]) for x in rows]

# ---- printed report
print()
print(f"machine: {env['MACHINE']}")
print(f"load:    {env['LOAD_START']} at the start, {env['LOAD_END']} at the end; 1-minute load before "
      f"the timed runs: median {st.median(loads):.2f}, {min(loads):.2f}-{max(loads):.2f}")
print(f"ociup {env['GIT_REV']} ({env['OCIUP_SRC']})  |  {env['VERSIONS']}")
print(f"input:   {json.loads(env['TREE_INFO']).get('kind')} tree {env['TREE']}")
print(f"         {int(env['FILE_COUNT'])} files, tar stream {tar_bytes} bytes "
      f"({tar_bytes / 1e6:.1f} MB), gzip -{env['LEVEL']} ratio "
      f"{tar_bytes / g['output_bytes']:.2f}x; {env['RUNS']} runs per tool, medians")
print()
hdr = f"{'tool':<30} {'wall s':>7} {'(min-max)':>13} {'MB/s':>7} {'CPU s':>6} {'output bytes':>13} {'vs gzip':>8} {'peak RSS':>10}"
print(hdr)
print("-" * len(hdr))
for t in tools.values():
    print(f"{t['command']:<30} {t['wall_s_median']:7.2f} "
          f"{'(' + format(t['wall_s_min'], '.2f') + '-' + format(t['wall_s_max'], '.2f') + ')':>13} "
          f"{t['mb_per_s_median']:7.1f} {t['cpu_s_median']:6.2f} {t['output_bytes']:13d} "
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
print(f"CPU:     pigz spends {ratios['pigz_cpu_over_ociup_cpu']:.2f}x and gzip "
      f"{ratios['gzip_cpu_over_ociup_cpu']:.2f}x the CPU time of ociup (medians; the wall-time "
      "ratios need idle cores to show it)")
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
