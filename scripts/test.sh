#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the tools the tests use (the CNCF
# Distribution server, skopeo and umoci, from Debian), then runs the checks CI runs: formatting,
# clippy with warnings as errors, every test and doctest of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in docker-registry skopeo umoci curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# `ociup run` tests: runc, and a static busybox to build the image they run (debootstrap for
# the Debian root file system compared with umoci's unpack; that test skips without it).
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  echo "installing ${need[*]} (Debian packages)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# Every parser of outside input under libFuzzer, 10 s per target here (FUZZ_SECONDS to change).
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash fuzz/run.sh
