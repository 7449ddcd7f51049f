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
# The durable-copy test watches a copy's system calls (which files are synced before renames).
command -v strace >/dev/null 2>&1 || need+=(strace)
# The Kubernetes tests: etcd for ../shared/k8s/start.sh, python3 for their admission webhook.
if [ -d ../shared/k8s ]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
fi
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  echo "installing ${need[*]} (Debian packages)"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Kubernetes tests (`ociup job --apply`) need a real kube-apiserver and controller manager:
# ../shared/k8s (beside the repository) starts them on loopback, once for the suite, stopped on
# exit. Without it those tests say they were skipped (and never reach a cluster of yours).
unset KUBECONFIG KUBE_URL KUBE_TOKEN KUBE_CA KUBE_STATE_DIR
if [ -d ../shared/k8s ]; then
  k8s_env=$(../shared/k8s/start.sh --with-controller-manager) \
    || { echo "cannot start the Kubernetes API server of ../shared/k8s" >&2; exit 1; }
  eval "$k8s_env"
  export KUBECONFIG KUBE_URL KUBE_TOKEN KUBE_CA KUBE_STATE_DIR
  trap '../shared/k8s/stop.sh "$KUBE_STATE_DIR" >/dev/null || true' EXIT
else
  echo "Kubernetes tests skipped: ../shared/k8s is absent (no API server to run ociup job --apply against)"
fi
# ociup's data directory (the default catalog, the run cache, what the registry client remembers
# of registries) for this suite alone: not the user's, and empty at the start of every run.
XDG_DATA_HOME=$(mktemp -d "${TMPDIR:-/tmp}/ociup-test-data.XXXXXX")
export XDG_DATA_HOME
cargo test --workspace --all-targets --locked
if [ -n "${KUBE_STATE_DIR:-}" ]; then # the cluster is needed no further
  ../shared/k8s/stop.sh "$KUBE_STATE_DIR" >/dev/null || true
  trap - EXIT
else # said again where it is seen, after the tests' output
  echo "Kubernetes tests skipped: ../shared/k8s is absent (no API server to run ociup job --apply against)"
fi
cargo test --workspace --doc --locked
# `ociup serve` against its OpenAPI document: schemathesis (PyPI), 20 examples per operation,
# with a requester's and an admin's token (about 30 s).
bash scripts/schemathesis.sh 20
# Every parser of outside input under libFuzzer, 10 s per target here (FUZZ_SECONDS to change).
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash fuzz/run.sh
rm -rf "$XDG_DATA_HOME"
