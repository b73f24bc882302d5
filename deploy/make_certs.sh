#!/usr/bin/env bash
# Make the TLS material of a HyDiscGAN-on-Flower deployment (self-signed CA; for tests and trials).
#
#   deploy/make_certs.sh [-o OUT_DIR] [-s SAN]... [-n NODE]... [-d DAYS]
#
#   -o  output folder (default: deploy/certs beside this script)
#   -s  extra subjectAltName for the SuperLink certificate, e.g. DNS:flower.example.org or
#       IP:203.0.113.7 (repeatable; always included: DNS:localhost, IP:127.0.0.1, DNS:superlink)
#   -n  also make a Runtime-API certificate for a SuperNode reached under the name NODE
#       (repeatable; default: supernode-0 supernode-1 supernode-2, the Compose service names)
#   -d  validity in days (default 365)
#
# Writes ca.crt/ca.key (the CA: keep ca.key off the servers), server.pem/server.key (SuperLink) and
# NODE.pem/NODE.key per SuperNode (SANs DNS:NODE, DNS:localhost, IP:127.0.0.1). Existing files are
# overwritten. Needs openssl. EC P-384 keys, SHA-384 signatures.
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/certs"
days=365
sans=()
nodes=()
while getopts "o:s:n:d:h" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    s) sans+=("$OPTARG") ;;
    n) nodes+=("$OPTARG") ;;
    d) days="$OPTARG" ;;
    h) sed -n '2,17p' "$0"; exit 0 ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ "$#" -ne 0 ]; then echo "make_certs.sh: unexpected argument '$1' (see -h)" >&2; exit 2; fi
if [ "${#nodes[@]}" -eq 0 ]; then nodes=(supernode-0 supernode-1 supernode-2); fi
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found" >&2; exit 1; }

mkdir -p "$out"
cd "$out"
umask 077  # private keys readable by their owner only
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$1" 2>/dev/null; }

new_key ca.key
openssl req -x509 -new -key ca.key -sha384 -days "$days" -subj "/CN=HyDiscGAN Flower CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out ca.crt

# sign NAME SANS: NAME.key and a CA-signed NAME.pem for TLS servers reached under SANS.
sign() {
  local name="$1" san="$2"
  new_key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$3" -out "$tmp/$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" \
    "subjectAltName=$san" > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days "$days" -sha384 -extfile "$tmp/$name.ext" -out "$name.pem" 2>/dev/null
}

server_sans="DNS:localhost,IP:127.0.0.1,DNS:superlink"
for san in "${sans[@]}"; do server_sans="$server_sans,$san"; done
sign server "$server_sans" superlink
for node in "${nodes[@]}"; do sign "$node" "DNS:$node,DNS:localhost,IP:127.0.0.1" "$node"; done
chmod 644 ca.crt ./*.pem

echo "wrote $out: ca.crt ca.key server.pem server.key${nodes:+ $(printf '%s.pem/.key ' "${nodes[@]}")}"
echo "SuperLink SANs: $server_sans"
