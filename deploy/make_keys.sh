#!/usr/bin/env bash
# Make one SuperNode authentication key pair per name (ECDSA P-384, OpenSSH format).
#
#   deploy/make_keys.sh [-o OUT_DIR] [NAME...]
#
#   -o  output folder (default: deploy/keys beside this script)
#   NAME defaults to supernode-0 supernode-1 supernode-2 (the Compose service names)
#
# Writes NAME (private key: stays on that data machine) and NAME.pub (register it on the SuperLink
# with `flwr supernode register OUT_DIR/NAME.pub <connection>`). An existing key is kept, never
# overwritten, because the SuperLink knows nodes by their public key. Needs ssh-keygen.
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/keys"
while getopts "o:h" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    h) sed -n '2,12p' "$0"; exit 0 ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
names=("$@")
if [ "${#names[@]}" -eq 0 ]; then names=(supernode-0 supernode-1 supernode-2); fi
command -v ssh-keygen >/dev/null || { echo "make_keys.sh: ssh-keygen not found (apt-get install openssh-client)" >&2; exit 1; }

mkdir -p "$out"
for name in "${names[@]}"; do
  case "$name" in */*|.*|"") echo "make_keys.sh: bad key name '$name'" >&2; exit 2 ;; esac
  if [ -e "$out/$name" ]; then
    echo "kept $out/$name (exists)"
  else
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$out/$name"
    echo "wrote $out/$name and $out/$name.pub"
  fi
done
