#!/usr/bin/env bash
# The whole story on the embedded default: a local OCI layout store and the fixture images, no
# registry, no network. Register a nick on base v1, resolve it, move the base tag to v2, resolve
# again (an upgrade happens), resolve once more (nothing happens), show status and history,
# verify the signed build manifest, and replay a version to the digest it recorded.
#
# OCIUP=path uses that binary (default: builds it); QUICKSTART_DIR=dir works there (default:
# target/quickstart, emptied first).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ -z "${OCIUP:-}" ]; then
  cargo build -q -p ociup-cli
  OCIUP=$repo/target/debug/ociup
fi
dir=${QUICKSTART_DIR:-$repo/target/quickstart}
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"

# The base: a copy of the fixture layout, whose tag "latest" starts at v1.
cp -r "$repo/fixtures/base" base
export OCIUP_CATALOG=oci:$dir/catalog SOURCE_DATE_EPOCH=1700000000 OCIUP_ACTOR=quickstart
printf 'print("training")\n' > train.py

step() { printf '\n== %s\n' "$*"; }

step "keygen"
"$OCIUP" keygen --out signer
export OCIUP_SIGNING_KEY=$dir/signer.key

step "register trainer on oci:base:latest (= v1)"
"$OCIUP" register trainer --base oci:base:latest --to oci:images \
  --add train.py:/opt/train.py --env MODE=train --entrypoint '["python3","/opt/train.py"]'

step "resolve (base unchanged: the registered version)"
"$OCIUP" resolve trainer

step "the base moves: latest now points to v2"
"$OCIUP" copy oci:base:v2 oci:base:latest >/dev/null
"$OCIUP" status

step "resolve (base moved: regenerated on v2)"
"$OCIUP" resolve trainer

step "resolve again (nothing to do)"
"$OCIUP" resolve trainer

step "history"
"$OCIUP" history trainer

step "verify the signed build manifest"
"$OCIUP" verify trainer --key signer.pub

step "replay version 2 from the recipe on its recorded base: the same digest"
"$OCIUP" replay trainer@2
