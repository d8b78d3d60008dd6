#!/usr/bin/env bash
# Property-based test of the control plane against its own OpenAPI document: starts a
# throwaway dooz-server on 127.0.0.1, runs schemathesis (PyPI, pinned) with the operator token
# against /v1/openapi.json, and fails on any 5xx or any answer that does not match the
# document (status code, content type, body schema, headers).
#
# Env: DOOZ_SCHEMATHESIS_EXAMPLES (default 30) generated cases per operation.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="$TARGET/schemathesis-$VERSION"
if [ ! -x "$VENV/bin/st" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

cargo build --locked -p dooz-server --bin dooz-server
DATA="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
TOKEN="st-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
DOOZ_ADMIN_TOKEN="$TOKEN" "$TARGET/debug/dooz-server" \
    --data-dir "$DATA" --listen 127.0.0.1:0 --http-listen "127.0.0.1:$PORT" \
    >"$DATA/server.log" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

# Wait (bounded) for the API to answer.
for _ in $(seq 1 100); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        cat "$DATA/server.log"
        echo "dooz-server exited before answering" >&2
        exit 1
    fi
    sleep 0.1
done

"$VENV/bin/st" --no-color run "http://127.0.0.1:$PORT/v1/openapi.json" \
    -H "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --max-examples "${DOOZ_SCHEMATHESIS_EXAMPLES:-30}" \
    --seed 1 --workers 1 --request-timeout 10 \
    --generation-database none
