#!/usr/bin/env python3
"""Every query of the Grafana dashboard against a real Prometheus scraping a real troupe.

Starts `troupe serve` (the embedded CPU model, a small KV cache so that requests get preempted) and the
packaged Prometheus (loopback, a free port, a temp storage dir, scraping troupe every second), sends traffic
(completions plain and streamed, repeated prompts for prefix-cache hits, concurrent long requests for
preemptions, bad requests, a client that goes away, WebSocket requests and a bad WebSocket message), then
through Prometheus' HTTP API: every panel query of dashboards/troupe.json, with its variables substituted,
returns data without error; every counter and histogram it reads went up during the test and every gauge
is there; the dashboard's variable queries find troupe's job and instance.

Usage: test_dashboard_prometheus.py TROUPE_BINARY SOURCE_DIR. Exit 77 (skip) only when the prometheus
binary is missing ($PROMETHEUS, else prometheus on PATH, else /usr/bin/prometheus)."""
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard  # noqa: E402

TROUPE, ROOT = sys.argv[1], os.path.abspath(sys.argv[2])
DEADLINE = time.monotonic() + 100  # everything below polls against this; ctest's TIMEOUT is the backstop
NUM_KV_BLOCKS = 24                 # 384 tokens: the concurrent requests below cannot all fit
T0 = time.monotonic()


def log(*a):
    print(f"[{time.monotonic() - T0:6.2f}s]", *a, flush=True)


def left():
    return DEADLINE - time.monotonic()


def poll(what, fn, timeout, interval=0.2):
    """fn() until it returns something truthy; fails with `what` after timeout seconds."""
    end = time.monotonic() + min(timeout, left())
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        time.sleep(interval)


def die_with_parent():
    # Children die with this script even when it is killed with SIGKILL (prctl PR_SET_PDEATHSIG).
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ----- troupe traffic -----

class Troupe:
    def __init__(self, host, port):
        self.host, self.port = host, port

    def request(self, method, path, body=None, raw=None, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            c.request(method, path, body=data, headers={"content-type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def complete(self, **kw):
        body = {"model": "default", "ignore_eos": True, "temperature": 0, **kw}
        status, data = self.request("POST", "/v1/completions", body)
        assert status == 200, f"completion: {status} {data[:300]!r}"
        out = json.loads(data)
        assert out["usage"]["completion_tokens"] == kw.get("max_tokens", 16), out["usage"]
        return out

    def stream(self, **kw):
        body = {"model": "default", "ignore_eos": True, "stream": True, **kw}
        status, data = self.request("POST", "/v1/completions", body)
        assert status == 200, f"stream: {status} {data[:300]!r}"
        events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", events[-3:]
        return events

    def walk_away(self):
        """Starts a long streamed generation and closes the socket after its first chunk."""
        s = socket.create_connection((self.host, self.port), timeout=30)
        body = json.dumps({"model": "default", "prompt": "going", "max_tokens": 300, "ignore_eos": True,
                           "stream": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:
            chunk = s.recv(4096)
            assert chunk, "connection closed before the first chunk"
            got += chunk
        s.close()


class WebSocket:
    """A minimal RFC 6455 client (text frames, masked) for /v1/ws."""

    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            assert chunk, "closed during the WebSocket handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, obj):
        data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        mask = os.urandom(4)
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            assert chunk, "WebSocket closed"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next text message as JSON (pings and fragments handled)."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise AssertionError(f"WebSocket closed by the server: {payload!r}")
            if opcode in (0x9, 0xA):
                continue  # keep-alive pings: the test is far shorter than the idle timeout
            message += payload
            if b0 & 0x80:
                return json.loads(message)

    def close(self):
        self.s.close()


def websocket_traffic(host, port):
    ws = WebSocket(host, port)
    try:
        ws.send({"type": "generate", "id": "w1", "prompt": "a websocket prompt", "max_tokens": 6,
                 "ignore_eos": True})
        ws.send(b"{not json")
        done = errors = 0
        while done < 1 or errors < 1:
            m = ws.recv()
            if m["type"] == "done":
                assert m["id"] == "w1" and m["usage"]["completion_tokens"] == 6, m
                done += 1
            elif m["type"] == "error":
                assert m["id"] is None and m["error"]["code"] == "invalid_json", m
                errors += 1
    finally:
        ws.close()


def traffic(t):
    # Plain and streamed completions.
    for i in range(4):
        t.complete(prompt=f"plain request number {i}", max_tokens=8 + i)
    for i in range(2):
        t.stream(prompt=f"streamed request {i}", max_tokens=12, stream_options={"include_usage": True})
    # The same long prompt three times: the later ones find its full blocks in the prefix cache.
    shared = "the quick brown fox jumps over the lazy dog " * 8
    for i in range(3):
        t.complete(prompt=shared, max_tokens=4)
    # Concurrent requests that outgrow the KV cache together: the scheduler preempts some of them.
    errors = []

    def long_one(i):
        try:
            t.complete(prompt=f"preempt me {i} " * 6, max_tokens=120)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=long_one, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(left(), 1))
    assert not errors, errors
    # Errors: a validation error, an unknown model, bad JSON, an unknown route, a wrong method.
    expect = [
        (("POST", "/v1/completions", {"prompt": "x", "top_p": 7}), 400),
        (("POST", "/v1/completions", {"prompt": "x", "model": "no-such-model"}), 404),
        (("POST", "/v1/completions", None, b"{not json"), 400),
        (("GET", "/nowhere"), 404),
        (("GET", "/v1/completions"), 405),
    ]
    for args, want in expect:
        status, data = t.request(*args)
        assert status == want, f"{args[:2]}: {status} (want {want}) {data[:200]!r}"
    # A client that goes away mid-stream, and the WebSocket.
    t.walk_away()
    websocket_traffic(t.host, t.port)


# ----- Prometheus -----

class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        status, data = http_get(url)
        body = json.loads(data)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data["resultType"]
        return data["result"]

    def scalar(self, expr):
        """The single value of an aggregating expression; 0 when the series does not exist (yet)."""
        r = self.query(expr)
        return float(r[0]["value"][1]) if r else 0.0


def prometheus_config(path, troupe_addr):
    with open(path, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: troupe
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: ['{troupe_addr}']
""")


def moved(prom, names, sel, before):
    """Counters and histogram counts went up since `before`; gauges exist."""
    problems = []
    for n in sorted(names):
        if n.endswith(("_bucket", "_sum", "_count")):
            base = n.rsplit("_", 1)[0]
            v = prom.scalar(f"sum({base}_count{{{sel}}})")
            if not v > before.get(base + "_count", 0):
                problems.append(f"histogram {base}: count {before.get(base + '_count', 0)} -> {v}")
        elif n.endswith("_total"):
            v = prom.scalar(f"sum({n}{{{sel}}})")
            if not v > before.get(n, 0):
                problems.append(f"counter {n}: {before.get(n, 0)} -> {v}")
        elif not prom.query(f"{n}{{{sel}}}"):
            problems.append(f"gauge {n}: no series")
    return problems


def run(tmp, children):
    dash = dashboard.load(ROOT)
    exprs = list(dashboard.queries(dash))
    names = set().union(*(dashboard.metric_names(e) for _, _, e in exprs))
    log(f"dashboard: {len(exprs)} queries over {len(names)} series")

    # troupe
    troupe_err = open(os.path.join(tmp, "troupe.stderr"), "w")
    troupe = subprocess.Popen(
        [TROUPE, "serve", "--config", "configs/default.yaml", "--port", "0", "--device", "cpu",
         "--num-kv-blocks", str(NUM_KV_BLOCKS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=troupe_err, text=True, preexec_fn=die_with_parent)
    children.append(("troupe", troupe, os.path.join(tmp, "troupe.stderr")))
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(troupe.stdout), daemon=True)
    reader.start()

    def listening():
        if troupe.poll() is not None:
            raise AssertionError(f"troupe serve exited with {troupe.returncode}")
        return next((ln.split()[-1] for ln in lines if ln.startswith("listening on ")), None)
    addr = poll("troupe to listen", listening, 30, 0.05)
    host, port = addr.rsplit(":", 1)
    t = Troupe(host, int(port))
    poll("troupe /ready", lambda: http_get(f"http://{addr}/ready", 5)[0] == 200, 60)
    log(f"troupe ready on {addr}")

    # Prometheus, on a port that was free a moment ago (another process may take it first: try again).
    config = os.path.join(tmp, "prometheus.yml")
    prometheus_config(config, addr)
    for attempt in range(3):
        prom_port = free_port()
        err = os.path.join(tmp, f"prometheus{attempt}.stderr")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(err, "w"), preexec_fn=die_with_parent)
        children.append(("prometheus", prometheus, err))
        prom = Prometheus(prom_port)

        def prom_ready():
            return prometheus.poll() is not None or http_get(prom.base + "/-/ready", 5)[0] == 200
        poll("Prometheus /-/ready", prom_ready, 30)
        if prometheus.poll() is None:
            break
        log(f"prometheus exited with {prometheus.returncode} (port {prom_port} taken?)")
    else:
        raise AssertionError("prometheus did not start")
    sel = f'job="troupe", instance="{addr}"'
    poll("a first scrape of troupe", lambda: prom.query(f"up{{{sel}}} == 1"), 30)
    log(f"prometheus ready on 127.0.0.1:{prom_port}, scraping troupe")

    before = {}
    for n in names:
        key = n.rsplit("_", 1)[0] + "_count" if n.endswith(("_bucket", "_sum", "_count")) else n
        if key.endswith("_total") or key.endswith("_count"):
            before[key] = prom.scalar(f"sum({key}{{{sel}}})")

    traffic(t)
    finished = time.time()
    log("traffic sent")

    # The last scrape must come after the traffic, and rate() needs two samples of series born late.
    def scrapes_since(t):
        secs = int(time.time() - t)  # the window (now - secs, now] starts after t
        return secs >= 1 and prom.scalar(f"count_over_time(troupe_build_info{{{sel}}}[{secs}s])") >= 2
    poll("two scrapes after the traffic", lambda: scrapes_since(finished), 20)

    values = {"job": "troupe", "instance": addr, "datasource": "", "__rate_interval": "1m",
              "__interval": "1s", "__range": "5m"}
    missing = []

    def all_answer():
        missing.clear()
        for title, ref, expr in exprs:
            q = dashboard.substitute(expr, values)
            if not prom.query(q):
                missing.append(f"{title} {ref}: {q}")
        return not missing
    try:
        poll("every panel query to return data", all_answer, 20, 0.5)
    except AssertionError:
        raise AssertionError("panel queries with no data:\n  " + "\n  ".join(missing))
    log(f"all {len(exprs)} panel queries return data")

    problems = []

    def all_moved():
        problems[:] = moved(prom, names, sel, before)
        return not problems
    try:
        poll("every series to move", all_moved, 10, 0.5)
    except AssertionError:
        raise AssertionError("series that did not move:\n  " + "\n  ".join(problems))
    log(f"all {len(names)} series moved (counters and histograms up, gauges present)")

    # The dashboard's variable queries: label_values(metric{...}, label).
    for v in dashboard.variables(dash).values():
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        inner = q[len("label_values("):-1]
        metric, label = inner.rsplit(",", 1)
        metric = dashboard.substitute(metric.strip(), {"job": "troupe", "instance": addr})
        got = prom.api(f"label/{label.strip()}/values", **{"match[]": metric})
        assert values[v["name"]] in got, f"variable {v['name']}: {q} -> {got}"
    log("variable queries find troupe's job and instance")

    # Spot checks of the numbers behind a few panels.
    hits = prom.scalar(f"sum(troupe_prefix_cache_hits_total{{{sel}}})")
    assert hits > 0, "prefix cache hits"
    errors = {(r["metric"]["type"], r["metric"]["code"]) for r in
              prom.query(f"troupe_api_errors_total{{{sel}}}")}
    for want in [("invalid_request_error", "400"), ("invalid_request_error", "404"),
                 ("invalid_request_error", "405"), ("invalid_request_error", "invalid_json")]:
        assert want in errors, f"troupe_api_errors_total{{type,code}} has {want}: {sorted(errors)}"
    # troupe's exposition, with every error label set the traffic created, stays lint-free.
    promtool = shutil.which("promtool") or os.path.join(os.path.dirname(PROMETHEUS), "promtool")
    if os.access(promtool, os.X_OK):
        text = http_get(f"http://{addr}/metrics")[1]
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), \
            f"promtool check metrics: {(r.stdout + r.stderr).decode(errors='replace')}"
        log("promtool check metrics: clean")
    else:
        log(f"no promtool next to {PROMETHEUS}: exposition lint skipped")
    log(f"prefix cache hits {hits:.0f}, preemptions "
        f"{prom.scalar(f'sum(troupe_preemptions_total{{{sel}}})'):.0f}, api errors {sorted(errors)}")


def stop(children):
    for name, p, _ in reversed(children):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p, _ in reversed(children):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    global PROMETHEUS
    PROMETHEUS = os.environ.get("PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(PROMETHEUS, os.X_OK):
        print(f"SKIP: no prometheus binary ({PROMETHEUS}); install the Debian package prometheus")
        return 77

    def on_term(signum, _frame):  # ctest's timeout: still stop both servers
        raise SystemExit(f"killed by signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    children = []
    tmp = tempfile.mkdtemp(prefix="troupe-ops-")
    ok = False
    try:
        run(tmp, children)
        ok = True
    except AssertionError as e:
        print(f"FAIL: {e}", flush=True)
    finally:
        stop(children)
        if not ok:
            for name, _, err in children:
                with open(err, errors="replace") as f:
                    tail = f.read()[-3000:]
                print(f"--- {name} stderr (tail) ---\n{tail}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if ok:
        log("ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
