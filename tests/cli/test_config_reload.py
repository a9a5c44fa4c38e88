#!/usr/bin/env python3
"""Config files and reloads through the real binary: every shipped config passes `troupe check-config`,
a bad one gets every problem at once (exit 1), and a running `troupe serve` under streaming traffic
takes SIGHUP and POST /admin/reload — a plugin change rebuilds the worker, a key change applies to new
requests, a bad config or a restart-only change is refused — without losing or changing any answer."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

TROUPE = sys.argv[1]
ROOT = sys.argv[2]
CUDA_ONLY = "this troupe was built without the CUDA backend"


def check_config(path):
    # From the repository root, as `troupe serve` would run: relative model paths resolve there.
    return subprocess.run([TROUPE, "check-config", path], capture_output=True, text=True, timeout=60, cwd=ROOT)


class CheckConfig(unittest.TestCase):
    def test_shipped_configs_are_valid(self):
        files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")) +
                       glob.glob(os.path.join(ROOT, "configs", "*.json")))
        self.assertGreaterEqual(len(files), 5)
        for f in files:
            p = subprocess.run([TROUPE, "check-config", f], capture_output=True, text=True, timeout=60, cwd=ROOT)
            problems = [l for l in p.stderr.splitlines() if l.startswith("  - ")]
            # Allowed: a cuda config checked by a CPU-only build, and the example's absent /etc files.
            real = [l for l in problems if CUDA_ONLY not in l and "'/etc/troupe/" not in l]
            self.assertEqual(real, [], f"{f}: {p.stderr}")
            if not problems:
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn("ok", p.stdout)
                self.assertIn("attention:", p.stdout)

    def test_every_problem_at_once(self):
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "bad.yaml")
            with open(f, "w") as out:
                out.write("modle: models/default\nport: 99999\ndevice: tpu\nattention: flashy\n"
                          "quantization: int4\nmax_num_seqs: 4096\ntensor_parallel_size: 2\n"
                          "preemption: swapp\nmax_num_batched_tokens: abc\ngpu_memory_utilization: 1.5\n")
            p = check_config(f)
            self.assertEqual(p.returncode, 1)
            for needle in ["did you mean 'model'", "port must be in 0..65535", "unknown device 'tpu' (valid: auto, cpu, cuda)",
                           "unknown plugin 'flashy' (valid: auto, flash, paged)", "quantization: 'int4'",
                           "tensor_parallel_size: 2", "preemption must be recompute or swap",
                           "max_num_batched_tokens: 'abc' is not an integer", "gpu_memory_utilization must be in (0, 1]"]:
                self.assertIn(needle, p.stderr)
            self.assertIn("10 problems", p.stderr)

    def test_combinations_and_files(self):
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "c.json")
            with open(f, "w") as out:
                json.dump({"model": os.path.join(d, "nowhere"), "device": "cpu", "attention": "paged",
                           "max_num_seqs": 512, "max_num_batched_tokens": 256, "tls_cert_file": "x.pem"}, out)
            p = check_config(f)
            self.assertEqual(p.returncode, 1)
            for needle in ["'paged' is a CUDA plugin, but device is cpu", "must not exceed max_num_batched_tokens",
                           "tls_cert_file and tls_key_file go together", "has no config.json"]:
                self.assertIn(needle, p.stderr)

    def test_unreadable_file(self):
        p = check_config("/nonexistent/troupe.yaml")
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot open", p.stderr)
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "broken.yaml")
            with open(f, "w") as out:
                out.write("model: [unclosed\n")
            p = check_config(f)
            self.assertEqual(p.returncode, 1)
            self.assertIn("not valid YAML/JSON", p.stderr)


def http(port, path, body=None, key=None, timeout=60):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET")
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stream(port, key, prompt, max_tokens):
    """A streamed greedy completion; returns (status, text, finish_reason)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST")
    req.data = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                           "stream": True}).encode()
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text, finish = "", None
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                for ch in ev.get("choices", []):
                    text += ch.get("text", "")
                    finish = ch.get("finish_reason") or finish
            return r.status, text, finish
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), None


class Reload(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.cfg = os.path.join(self.dir.name, "troupe.yaml")
        self.keys = os.path.join(self.dir.name, "keys")
        with open(self.keys, "w") as f:
            f.write("old-key\n")
        self.write_config()
        self.proc = subprocess.Popen([TROUPE, "serve", "--config", self.cfg, "--port", "0"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        self.assertIn("listening on", line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.port = int(line.strip().rsplit(":", 1)[1])
        deadline = time.time() + 60
        while http(self.port, "/ready")[0] != 200:
            self.assertLess(time.time(), deadline, "server never became ready")
            time.sleep(0.1)

    def tearDown(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.dir.cleanup()

    def write_config(self, **extra):
        lines = ["model: models/default", "device: cpu", "max_kv_tokens: 8192", "max_num_seqs: 32",
                 f"api_key_file: {self.keys}"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")

    def reload_via_api(self, key):
        status, body = http(self.port, "/admin/reload", body={}, key=key, timeout=120)
        return status, json.loads(body)

    def test_reloads_under_traffic_lose_nothing(self):
        prompts = [f"request number {i} asks" for i in range(6)]
        expected = {}
        for p in prompts:  # the answers before any reload
            status, text, finish = stream(self.port, "old-key", p, 24)
            self.assertEqual((status, finish), (200, "length"), text)
            expected[p] = text

        results, stop = [], threading.Event()
        lock = threading.Lock()

        def client(i):
            while not stop.is_set():
                p = prompts[i % len(prompts)]
                key = "old-key"  # valid before and after every reload below
                try:
                    r = stream(self.port, key, p, 24)
                except Exception as e:  # a connection error is a lost request
                    r = ("exception", repr(e), None)
                with lock:
                    results.append((p, key, r))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            # 1. SIGHUP with a plugin change (the CPU worker is rebuilt) and a new key file.
            with open(self.keys, "w") as f:
                f.write("old-key\nnew-key\n")
            self.write_config(attention="auto", gpu_memory_utilization=0.8)
            self.proc.send_signal(signal.SIGHUP)
            deadline = time.time() + 30
            while http(self.port, "/v1/models", key="new-key")[0] != 200:
                self.assertLess(time.time(), deadline, "SIGHUP never applied the new key")
                time.sleep(0.05)
            time.sleep(0.5)
            # 2. The admin route: a restart-only change is refused and nothing changes.
            self.write_config(gpu_memory_utilization=0.8, max_num_seqs=8)
            status, body = self.reload_via_api("new-key")
            self.assertEqual(status, 400, body)
            self.assertEqual(body["status"], "refused")
            self.assertIn("'max_num_seqs' changed", " ".join(body["problems"]))
            # 3. A broken config is refused; the old one keeps serving.
            with open(self.cfg, "w") as f:
                f.write("model: models/default\ndevice: cpu\nattenton: paged\n")
            status, body = self.reload_via_api("old-key")
            self.assertEqual(status, 400, body)
            self.assertIn("did you mean 'attention'", " ".join(body["problems"]))
            # 4. A plugin change through the admin route, under traffic.
            self.write_config(gpu_memory_utilization=0.7)
            status, body = self.reload_via_api("old-key")
            self.assertEqual(status, 200, body)
            self.assertIn("gpu_memory_utilization: 0.7", body["changed"])
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)

        self.assertGreater(len(results), 16)
        for p, key, (status, text, finish) in results:
            self.assertEqual(status, 200, f"{key}: {text}")
            self.assertEqual(finish, "length")
            self.assertEqual(text, expected[p], f"answer changed across reloads for {p!r}")
        # Without a valid key the admin route is refused.
        self.assertEqual(http(self.port, "/admin/reload", body={}, key="wrong")[0], 401)
        metrics = http(self.port, "/metrics")[1]
        idle = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
                if l.startswith(("troupe_requests_running ", "troupe_kv_cache_usage_ratio "))}
        deadline = time.time() + 30
        while any(idle.values()) and time.time() < deadline:
            time.sleep(0.2)
            metrics = http(self.port, "/metrics")[1]
            idle = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
                    if l.startswith(("troupe_requests_running ", "troupe_kv_cache_usage_ratio "))}
        self.assertEqual(idle, {"troupe_requests_running": 0.0, "troupe_kv_cache_usage_ratio": 0.0})
        err = ""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        self.assertIn("SIGHUP: re-reading", err)
        self.assertIn("reload applied", err)
        self.assertIn("reload refused", err)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
