#!/usr/bin/env bash
# A test certificate authority and the certificates Rung's TLS set-up needs:
#   deploy/tls/make-certs.sh DIR [--name CA_NAME] [--days N] [HOST_OR_IP...]
# writes into DIR:
#   ca.pem, ca.key          the CA (keep ca.key offline in anything real)
#   server.pem, server.key  the broker's certificate, for the given hosts and IPs
#                           (default: localhost and 127.0.0.1)
#   client.pem, client.key  a client certificate (CN=rung-client), for mutual TLS
# Keys are EC P-256. For production use your organisation's CA; this is for tests and
# trials of the amqps set-up in docs/deploy.md.
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
dir="$1"; shift
name="rung test ca"; days=30
hosts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --name) name="$2"; shift 2 ;;
        --days) days="$2"; shift 2 ;;
        *) hosts+=("$1"); shift ;;
    esac
done
[ ${#hosts[@]} -gt 0 ] || hosts=(localhost 127.0.0.1)
san=""
for host in "${hosts[@]}"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then entry="IP:$host"; else entry="DNS:$host"; fi
    san="${san:+$san,}$entry"
done
mkdir -p "$dir"
key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${key[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$days" \
    -subj "/CN=$name" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() {  # leaf NAME EXTENSIONS
    openssl req "${key[@]}" -keyout "$dir/$1.key" -out "$dir/$1.csr" -subj "/CN=$1" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "authorityKeyIdentifier=keyid,issuer" "$2" > "$dir/$1.ext"
    openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -out "$dir/$1.pem" -days "$days" -extfile "$dir/$1.ext" 2>/dev/null
    rm -f "$dir/$1.csr" "$dir/$1.ext"
}
leaf server "$(printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s' "$san")"
leaf rung-client "extendedKeyUsage=clientAuth"
mv "$dir/rung-client.pem" "$dir/client.pem"; mv "$dir/rung-client.key" "$dir/client.key"
chmod 600 "$dir"/*.key
chmod 644 "$dir"/*.pem
echo "certificates in $dir: ca.pem, server.pem/.key (${hosts[*]}), client.pem/.key" >&2
