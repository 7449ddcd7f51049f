#!/usr/bin/env bash
# Multi-platform managed-image benchmark: what `ociup resolve` of a nick on an 8-platform base
# index costs after ONE platform of the base moved, against the same 8 platforms managed as 8
# single-platform nicks (one of whose bases moved), on a real registry (CNCF Distribution,
# `docker-registry serve`) on 127.0.0.1: HTTP requests and wall time.
#
#   bash benches/resolve-multi.sh      # from the repository root (or from anywhere)
#
# Setup (not measured): a fresh registry (benches/lib.sh). Eight small base images, one per
# platform (linux/amd64, arm64/v8, arm/v7, arm/v6, 386, ppc64le, s390x, riscv64), each built by
# `ociup append --base scratch --platform P` with two files, in two versions (v1, v2), pushed to
# HOST/lib/multi8:pN-vK; `ociup index create` makes the index A (all v1) and the index B (all v1
# but platform 1, arm64/v8, at v2). Each platform's v1 is also copied to HOST/lib/singleN:cur.
# Nicks (one layout catalog, so the requests counted are the image and base ones):
#   m     on HOST/lib/multi8:cur (an 8-platform index version), target HOST/team/m
#   s0-s7 on HOST/lib/single0..7:cur (one platform each), targets HOST/team/s0..7
# Each of two warm-up resolves (not counted) and BENCH_RUNS runs moves the bases (untimed, with
# `ociup copy`): multi8:cur between B and A, single1:cur between p1-v2 and p1-v1, then measures,
# in an order rotated run by run:
#   index     `ociup resolve m --json`           (arm64 regenerated, 7 platforms kept)
#   single    `ociup resolve s1 --json`          (the one single nick whose base moved)
#   rest      `ociup resolve sN --json` for the 7 others (nothing due), in one shell loop
# "8 singles" is single + rest. Every index run is checked: upgraded, exactly one platform with a
# new manifest (arm64), the 7 others unchanged.
#
# Target (reported met or MISSED, never failing the script): the index resolve makes no more
# requests than one single-platform upgrade plus one per platform (median of `single` + 8).
#
# Settings: BENCH_RUNS=9 (>= 7), BENCH_WORKDIR=DIR (kept), OCIUP=PATH (default: builds
# target/release/ociup), BENCH_JSON=PATH (default benches/results/resolve-multi.json).
# Needs bash 5, curl, python3, GNU time and docker-registry. Only 127.0.0.1 is contacted. About
# a minute on 2 cores.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
unset SOURCE_DATE_EPOCH HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
unset OCIUP_CATALOG OCIUP_SIGNING_KEY OCIUP_USERNAME OCIUP_PASSWORD
export OCIUP_ACTOR=bench

cd "$(dirname "$0")/.."
ROOT=$PWD
. benches/lib.sh

RUNS=${BENCH_RUNS:-9}
JSON_OUT=${BENCH_JSON:-$ROOT/benches/results/resolve-multi.json}
[ "$RUNS" -ge 7 ] || die "BENCH_RUNS must be at least 7"
bench_need python3 curl docker-registry
bench_ociup
bench_workdir ociup-resolve-multi
mkdir -p "$WORK/bin"
cp "$OCIUP" "$WORK/bin/ociup" # a snapshot: others may rebuild target/release meanwhile
OCIUP=$WORK/bin/ociup
rm -rf "$WORK/files" "$WORK/catalog" "$WORK/out" "$WORK/requests"
mkdir -p "$WORK/files"
start_registry registry
export OCIUP_INSECURE_REGISTRIES=$REG_HOST
export OCIUP_CATALOG=oci:$WORK/catalog
H=$REG_HOST
q() { "$OCIUP" "$@" >/dev/null; }

log "machine: $(bench_machine)"
log "setup: 8 platforms x 2 versions on $H"
PLATFORMS=(linux/amd64 linux/arm64/v8 linux/arm/v7 linux/arm/v6 linux/386 linux/ppc64le linux/s390x linux/riscv64)
for i in "${!PLATFORMS[@]}"; do
  for v in v1 v2; do
    printf '%s %s\n' "${PLATFORMS[$i]}" "$v" >"$WORK/files/release"
    head -c 200000 /dev/urandom >"$WORK/files/blob-$i-$v"
    q append --base scratch --platform "${PLATFORMS[$i]}" \
      --add "$WORK/files/release:/etc/release" --add "$WORK/files/blob-$i-$v:/usr/lib/blob" \
      --to "$H/lib/multi8:p$i-$v"
  done
  q copy "$H/lib/multi8:p$i-v1" "$H/lib/single$i:cur"
  q copy "$H/lib/multi8:p$i-v2" "$H/lib/single$i:v2"
done
a_refs=() b_refs=()
for i in "${!PLATFORMS[@]}"; do
  a_refs+=("$H/lib/multi8:p$i-v1")
  if [ "$i" = 1 ]; then b_refs+=("$H/lib/multi8:p$i-v2"); else b_refs+=("$H/lib/multi8:p$i-v1"); fi
done
q index create --to "$H/lib/multi8:idx-a" "${a_refs[@]}"
q index create --to "$H/lib/multi8:idx-b" "${b_refs[@]}"
q copy "$H/lib/multi8:idx-a" "$H/lib/multi8:cur"
echo "custom app" >"$WORK/files/app.txt"
head -c 300000 /dev/urandom >"$WORK/files/app.bin"
steps=(--add "$WORK/files/app.txt:/opt/app.txt" --add "$WORK/files/app.bin:/opt/app.bin" --env APP=1)
q register m --base "$H/lib/multi8:cur" --to "$H/team/m" "${steps[@]}"
for i in "${!PLATFORMS[@]}"; do
  q register "s$i" --base "$H/lib/single$i:cur" --to "$H/team/s$i" "${steps[@]}"
done

# move N: the bases to state N (odd: arm64 at v2; even: all v1).
move() {
  if [ $(($1 % 2)) = 1 ]; then
    q copy "$H/lib/multi8:idx-b" "$H/lib/multi8:cur"
    q copy "$H/lib/single1:v2" "$H/lib/single1:cur"
  else
    q copy "$H/lib/multi8:idx-a" "$H/lib/multi8:cur"
    q copy "$H/lib/multi8:p1-v1" "$H/lib/single1:cur"
  fi
}
rest() {
  local i
  for i in 0 2 3 4 5 6 7; do "$OCIUP" resolve "s$i" --json >/dev/null; done
}
export -f rest
export OCIUP

TSV=$WORK/runs.tsv
: >"$TSV"
PREV_M=$("$OCIUP" resolve m --json)
for ((r = -1; r <= RUNS; r++)); do # runs -1 and 0 warm up (both directions once)
  move $((r + 2))
  bench_rotate $((r + 2)) index single rest
  for what in "${ORDER[@]}"; do
    id=$what-$((r + 2))
    # Captured first: a failed measure stops the script (set -e), which `read <<<"$(...)"` hides.
    case $what in
      index) res=$(measure "$id" "$OCIUP" resolve m --json) ;;
      single) res=$(measure "$id" "$OCIUP" resolve s1 --json) ;;
      rest) res=$(measure "$id" bash -c rest) ;;
    esac
    read -r wall rss _ <<<"$res"
    n=$(wc -l <"$WORK/requests/$id.log")
    if [ "$what" = index ]; then
      PREV_M=$(python3 - "$WORK/out/$id.out" "$PREV_M" <<'EOF'
import json, sys
new = json.load(open(sys.argv[1]))
old = json.loads(sys.argv[2])
assert new["upgraded"], new
changed = [n["platform"] for n, o in zip(new["platforms"], old["platforms"]) if n["digest"] != o["digest"]]
assert changed == ["linux/arm64/v8"], changed
assert len(new["platforms"]) == 8
print(json.dumps(new))
EOF
      )
    fi
    [ "$r" -ge 1 ] && printf '%s\t%s\t%s\t%s\n' "$what" "$r" "$n" "$wall" >>"$TSV"
  done
done

export TSV JSON_OUT RUNS LOAD_END="$(bench_load)" MACHINE="$(bench_machine)" REV="$(bench_git_rev)"
mkdir -p "$(dirname "$JSON_OUT")"
python3 - <<'EOF'
import json, os, statistics
rows = [l.split("\t") for l in open(os.environ["TSV"]).read().splitlines()]
def col(what, k):
    return [float(r[k]) for r in rows if r[0] == what]
med = {w: {"requests": statistics.median(col(w, 2)), "wall_s": statistics.median(col(w, 3))}
       for w in ("index", "single", "rest")}
eight = {"requests": med["single"]["requests"] + med["rest"]["requests"],
         "wall_s": round(med["single"]["wall_s"] + med["rest"]["wall_s"], 3)}
target = med["single"]["requests"] + 8
out = {"runs": int(os.environ["RUNS"]), "machine": os.environ["MACHINE"], "load_end": os.environ["LOAD_END"],
       "commit": os.environ["REV"], "index": med["index"], "single_upgrade": med["single"],
       "seven_singles_nothing_due": med["rest"], "eight_singles": eight,
       "target_requests": target, "target_met": med["index"]["requests"] <= target}
json.dump(out, open(os.environ["JSON_OUT"], "w"), indent=2)
print(f"resolve after 1 of 8 platforms moved (medians of {out['runs']} runs; {out['machine']}; load at end {out['load_end']})")
print(f"  index nick (8 platforms)       {med['index']['requests']:5.0f} requests  {med['index']['wall_s']:.3f} s")
print(f"  1 single nick (upgrade)        {med['single']['requests']:5.0f} requests  {med['single']['wall_s']:.3f} s")
print(f"  7 single nicks (nothing due)   {med['rest']['requests']:5.0f} requests  {med['rest']['wall_s']:.3f} s")
print(f"  8 single nicks                 {eight['requests']:5.0f} requests  {eight['wall_s']:.3f} s  "
      f"(index/8 singles: requests {med['index']['requests'] / eight['requests']:.2f}, wall {med['index']['wall_s'] / eight['wall_s']:.2f})")
print(f"  target: index <= single upgrade + 8 = {target:.0f} requests: {'met' if out['target_met'] else 'MISSED'}")
EOF
log "requests per run in $WORK/requests (kept with BENCH_WORKDIR); summary in $JSON_OUT"
