#!/bin/sh
# The owner workflow end to end against a scratch state directory (no TPM needed).
# Usage: sh ota/recipes/owner-workflow.sh [KESTREL]   (default: kestrel on PATH)
set -eu
K=${1:-kestrel}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export KESTREL_STATE="$W/state" KESTREL_PASSPHRASE="agent passphrase" KESTREL_OWNER_PASSPHRASE="owner passphrase"
here=$(cd "$(dirname "$0")/.." && pwd)

printf 'agent passphrase' > "$W/pf"; chmod 600 "$W/pf"
"$K" init-agent --name recipe --passphrase-file "$W/pf" >/dev/null
AGENT=$("$K" identity show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["did"])')

O1=$("$K" owner init --key "$W/o1.key"); O2=$("$K" owner init --key "$W/o2.key"); O3=$("$K" owner init --key "$W/o3.key")
"$K" trust init --owner "$O1" --owner "$O2" --owner "$O3" --threshold 2

"$K" bundle build --policy "$here/policies/greenhouse.yaml" --counter 1 --expires 7d --target "$AGENT" -o "$W/b1.kbundle"
"$K" bundle sign "$W/b1.kbundle" --key "$W/o1.key"
"$K" ota apply "$W/b1.kbundle" && { echo "applied with 1 of 2 signatures?!"; exit 1; } || true
"$K" bundle sign "$W/b1.kbundle" --key "$W/o2.key"
"$K" bundle verify "$W/b1.kbundle"
"$K" ota apply "$W/b1.kbundle"
"$K" policy explain --action set_pin --pin 17 --value 1

"$K" bundle build --policy "$here/policies/seed.yaml" --counter 2 --target "$AGENT" -o "$W/b2.kbundle"
"$K" bundle sign "$W/b2.kbundle" --key "$W/o2.key"; "$K" bundle sign "$W/b2.kbundle" --key "$W/o3.key"
"$K" ota apply "$W/b2.kbundle"
"$K" ota rollback
"$K" ota apply "$W/b1.kbundle" && { echo "older bundle accepted?!"; exit 1; } || true
"$K" ota status

O4=$("$K" owner init --key "$W/o4.key")
"$K" trust rotate --owner "$O3" --owner "$O4" --threshold 2 --key "$W/o1.key" --key "$W/o2.key" \
    --key "$W/o3.key" --key "$W/o4.key"
"$K" trust show
echo "recipe completed"
