#!/usr/bin/env bash
# Starts a local S3-compatible server (moto, see s3_server.py) for the
# object storage tests, and prints the environment that points tpde at it:
#
#   eval "$(scripts/s3-server.sh)"     # exports AWS_*, TPDE_TEST_S3=1,
#                                      # TPDE_TEST_S3_BUCKET, TPDE_S3_SERVER_PID
#   ...                                # cargo test, pytest
#   kill "$TPDE_S3_SERVER_PID"
#
# moto is installed into the venv ${TPDE_VENV:-~/.cache/tpde/venv} (created
# if missing) when it is not there. PORT defaults to a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TPDE_VENV:-$HOME/.cache/tpde/venv}
moto_req="moto[server]==5.2.5"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
if ! "$venv/bin/python" -c 'import moto.moto_server.werkzeug_app, flask' 2>/dev/null \
  || [ "$("$venv/bin/python" -c 'import moto; print(moto.__version__)')" != "5.2.5" ]; then
  "$venv/bin/pip" install -q "$moto_req" >&2
fi
port=${PORT:-$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
bucket=tpde-test
log=${TMPDIR:-/tmp}/tpde-s3-server-$port.log
"$venv/bin/python" scripts/s3_server.py "$port" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/data.json', timeout=1)" 2>/dev/null; then
    # The tests' bucket (each test works under its own prefix).
    "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/$bucket', method='PUT'), timeout=5)"
    cat <<VARS
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export TPDE_TEST_S3=1
export TPDE_TEST_S3_BUCKET=$bucket
export TPDE_S3_SERVER_PID=$pid
VARS
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the S3 test server did not start; its log ($log):" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done
kill "$pid" 2>/dev/null || true
echo "the S3 test server did not answer on port $port within 20 s; its log ($log):" >&2
cat "$log" >&2
exit 1
