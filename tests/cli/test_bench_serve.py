#!/usr/bin/env python3
"""`troupe bench serve` end to end: starts the real `troupe serve` on the embedded model (CPU) on port 0,
runs the benchmark with both backends (openai SSE and ws) at a Poisson rate on the prefix dataset, checks
the JSON record and that the server's prefix cache was hit, then stops the server with SIGTERM.
Every run has a --request-timeout well inside the test's own limit: a request that never ends (a stalled
engine, a lost final frame) fails with its id in the record instead of hanging the test until ctest kills it.
Usage: test_bench_serve.py TROUPE_BINARY SOURCE_DIR"""
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

TROUPE = sys.argv[1]
ROOT = sys.argv[2]
NUM_PROMPTS, PREFIX_LEN, INPUT_LEN, OUTPUT_LEN = 24, 32, 32, 16
# A request takes about a second here. With the engine stuck, the capped ws case (4 waves of 6) still ends
# within the limit, its 24 failures named in the record.
BENCH_LIMIT_S, REQUEST_TIMEOUT_S = 120, 25


def start_server():
    p = subprocess.Popen([TROUPE, "serve", "--config", "configs/default.yaml", "--port", "0"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.time() + 60
    while time.time() < deadline:
        if not sel.select(timeout=1):
            if p.poll() is not None:
                break
            continue
        line = p.stdout.readline()
        if not line:
            break
        m = re.match(r"listening on ([\d.]+):(\d+)", line)
        if m:
            url = f"http://{m.group(1)}:{m.group(2)}"
            break
    else:
        url = None
    # The server listens while the model loads; /ready turns 200 when it serves.
    while url and time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/ready", timeout=5).status == 200:
                return p, url
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"troupe serve did not start: {p.stderr.read()}")


def prefix_cache_hits(base_url):
    text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
    m = re.search(r"^troupe_prefix_cache_hits_total(?:\{\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def bench(*args, check=True):
    try:
        p = subprocess.run([TROUPE, "bench", "serve", *args], capture_output=True, text=True,
                           timeout=BENCH_LIMIT_S)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"bench serve {' '.join(args)} still ran after {BENCH_LIMIT_S} s:\n{err}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"bench serve {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


class BenchServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server, cls.url = start_server()
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        try:
            cls.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cls.server.kill()
        cls.tmp.cleanup()

    def run_prefix(self, backend, *extra):
        path = os.path.join(self.tmp.name, f"{backend}.json")
        hits_before = prefix_cache_hits(self.url)
        p = bench("--base-url", self.url, "--backend", backend, "--dataset", "prefix", "--prefix-len",
                  str(PREFIX_LEN), "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN), "--num-prompts",
                  str(NUM_PROMPTS), "--request-rate", "40", "--seed", "1", "--goodput", "ttft:5000", "e2el:20000",
                  "--request-timeout", str(REQUEST_TIMEOUT_S), "--json", path, *extra)
        with open(path) as f:
            rec = json.load(f)
        return p, rec, prefix_cache_hits(self.url) - hits_before

    def check_record(self, rec, backend):
        cfg, s, reqs = rec["config"], rec["summary"], rec["requests"]
        if s["failed"]:  # at once: ctest may kill the run before unittest prints its tracebacks
            print(f"{backend}: {s['failed']} requests failed:", *sorted({r["error"] for r in reqs if r["error"]}),
                  sep="\n  ", file=sys.stderr, flush=True)
        self.assertEqual(cfg["backend"], backend)
        self.assertEqual(cfg["model"], "default")  # the first of GET /v1/models
        self.assertEqual(cfg["request_rate"], 40)
        self.assertEqual(cfg["request_timeout_s"], REQUEST_TIMEOUT_S)
        self.assertEqual(s["failed"], 0, [r["error"] for r in reqs if r["error"]])
        self.assertEqual(s["completed"], NUM_PROMPTS)
        self.assertEqual(len(reqs), NUM_PROMPTS)
        self.assertEqual(s["total_output_tokens"], NUM_PROMPTS * OUTPUT_LEN)
        self.assertEqual(s["total_input_tokens"], NUM_PROMPTS * (PREFIX_LEN + INPUT_LEN))
        self.assertGreater(s["duration_s"], 0)
        self.assertGreater(s["request_throughput"], 0)
        self.assertIsNotNone(s["request_goodput"])
        self.assertLessEqual(s["request_goodput"], s["request_throughput"] + 1e-9)
        self.assertAlmostEqual(s["output_throughput"], s["total_output_tokens"] / s["duration_s"], places=6)
        for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            d = s[name]
            self.assertGreater(d["mean"], 0, name)
            self.assertLessEqual(d["median"], d["p99"] + 1e-9, name)
            self.assertLessEqual(d["p90"], d["p99"] + 1e-9, name)
        starts = [r["start_s"] for r in reqs]
        self.assertEqual(starts, sorted(starts))
        self.assertGreater(starts[-1], 0.1)  # a Poisson schedule, not all at once
        for r in reqs:
            self.assertTrue(r["success"], r["error"])
            self.assertIsNone(r["error"])
            self.assertEqual(r["output_tokens"], OUTPUT_LEN)
            self.assertEqual(r["expected_output_tokens"], OUTPUT_LEN)
            self.assertEqual(r["prompt_tokens"], PREFIX_LEN + INPUT_LEN)
            self.assertGreater(r["ttft_ms"], 0)
            self.assertLessEqual(r["ttft_ms"], r["latency_ms"])
            self.assertGreater(r["tpot_ms"], 0)
            self.assertAlmostEqual(r["tpot_ms"], (r["latency_ms"] - r["ttft_ms"]) / (OUTPUT_LEN - 1), places=6)
            # A chunk carries one engine step's tokens or, when the server coalesces output a busy client
            # has not read yet, several steps': never more gaps than tokens after the first.
            self.assertLessEqual(len(r["itl_ms"]), OUTPUT_LEN - 1)
            self.assertTrue(all(x >= 0 for x in r["itl_ms"]))
            self.assertLessEqual(sum(r["itl_ms"]), r["latency_ms"] - r["ttft_ms"] + 1e-6)

    def check_output(self, p):
        self.assertIn("============ Serving Benchmark Result ============", p.stdout)
        for label in ("Successful requests:", "Failed requests:", "Request goodput (req/s):",
                      "Output token throughput (tok/s):", "Median TTFT (ms):", "P99 TPOT (ms):", "P90 ITL (ms):",
                      "Mean E2EL (ms):"):
            self.assertIn(label, p.stdout)
        self.assertRegex(p.stdout, rf"Successful requests:\s+{NUM_PROMPTS}\n")
        # stderr is not a terminal here: plain progress lines, no carriage returns.
        self.assertIn(f"{NUM_PROMPTS}/{NUM_PROMPTS} done", p.stderr)
        self.assertNotIn("\r", p.stderr)

    def test_openai_backend_prefix_dataset(self):
        p, rec, hits = self.run_prefix("openai")
        self.check_record(rec, "openai")
        self.check_output(p)
        self.assertEqual(rec["config"]["prefix_len"], PREFIX_LEN)
        # Each prompt shares 32 tokens (two KV blocks) with every other: most should hit the prefix cache.
        self.assertGreater(hits, 0)

    def test_ws_backend_prefix_dataset_capped_concurrency(self):
        p, rec, hits = self.run_prefix("ws", "--max-concurrency", "6", "--ws-connections", "2")
        self.check_record(rec, "ws")
        self.check_output(p)
        self.assertEqual(rec["config"]["max_concurrency"], 6)
        self.assertIn("Maximum request concurrency:", p.stdout)
        self.assertGreater(hits, 0)

    def test_sharegpt_dataset_with_the_model_tokenizer(self):
        path = os.path.join(self.tmp.name, "sharegpt.json")
        bench("--base-url", self.url, "--backend", "ws", "--dataset", "sharegpt", "--dataset-path",
              os.path.join(ROOT, "tests", "cli", "data", "sharegpt_small.json"), "--tokenizer",
              os.path.join(ROOT, "models", "default"), "--num-prompts", "6", "--request-timeout",
              str(REQUEST_TIMEOUT_S), "--json", path)
        with open(path) as f:
            rec = json.load(f)
        self.assertEqual(rec["summary"]["completed"], 6)
        for r in rec["requests"]:
            self.assertTrue(r["success"], r["error"])
            self.assertGreaterEqual(r["prompt_tokens"], 4)
            self.assertGreaterEqual(r["expected_output_tokens"], 4)
            self.assertEqual(r["output_tokens"], r["expected_output_tokens"])

    def test_bad_input_is_one_line_error(self):
        for args, want in ((["--backend", "grpc"], "--backend must be openai or ws"),
                           (["--dataset", "sharegpt"], "needs --dataset-path"),
                           (["--request-rate", "0"], "--request-rate must be > 0"),
                           (["--request-timeout", "0"], "--request-timeout must be"),
                           (["--goodput", "ttft"], "--goodput"),
                           (["--base-url", self.url, "--model", "nope", "--num-prompts", "2", "--input-len", "4",
                             "--output-len", "2"], "the test request failed")):
            p = bench(*args, check=False)
            self.assertEqual(p.returncode, 1, (args, p.stderr))
            self.assertIn(want, p.stderr)
            self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
