# Shared by loadtest/allocs.sh and loadtest/instructions.sh (sourced, not
# run): a work folder cleaned up on exit, an nginx backend on a free
# loopback port, a one-shard gateway config with a mock and a proxied
# route, and a raw-socket keep-alive client. Both scripts count the same
# requests against the same gateway, so their figures line up.

# Installs what the counting needs when it is missing (root with apt-get).
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null && continue
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    done
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The backend: one nginx worker answering every path with a fixed body.
BACKEND_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type text/plain; return 200 "hello, world\n"; }
    }
}
NGINX
start_backend() {
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
    PIDS+=($!)
}

# The gateway's config on port $1: /mock answered by a mock integration,
# every other path proxied to the backend. GATEWAY_API_EXTRA, if set, is
# added to the API's table (e.g. an access_log).
write_gateway_config() {
    cat >"$WORK/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$1"]
shards = 1

[[upstreams]]
name = "backend"
targets = [{ address = "127.0.0.1:$BACKEND_PORT" }]

[[apis]]
name = "bench"
${GATEWAY_API_EXTRA:-}

[[apis.routes]]
key = "GET /mock"
integration = { type = "mock", status = 200, headers = { "content-type" = "text/plain" }, body = "hello, world\n" }

[[apis.routes]]
key = "ANY /{proxy+}"
integration = { type = "http_proxy", url = "http://backend/{proxy}" }
TOML
}

# Waits (at most 30 s) until something accepts on port $1.
wait_port() {
    local _
    for _ in $(seq 300); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# The client: `python3 "$WORK/client.py" PORT PATH N` sends N requests on
# one keep-alive connection, one at a time, raw bytes: no client library
# between the numbers and the socket.
cat >"$WORK/client.py" <<'PY'
import socket, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
for _ in range(n):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = s.recv(65536)
        if not more:
            sys.exit(f"{path}: connection closed")
        buf += more
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        sys.exit(f"{path}: {head[:40]!r}")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
s.close()
PY
