#!/usr/bin/env python3
"""Runs the troupe binary the way scripts and users do and checks the CLI contract:
JSON shapes on stdout, agreement with the committed Hugging Face goldens, and clear one-line errors with
exit status 1 for bad input (never a crash)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

TROUPE = sys.argv[1]
ROOT = sys.argv[2]
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")


def run(*args, check=True):
    p = subprocess.run([TROUPE, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"troupe {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def write(path, data, mode="w"):
    with open(path, mode) as f:
        f.write(data)


def golden(name):
    with open(os.path.join(GOLDEN, name, "golden.json")) as f:
        return json.load(f)


class Cli(unittest.TestCase):
    def test_generate_json_matches_hf_greedy(self):
        g = golden("llama_gqa")["cases"][1]
        ids = ",".join(map(str, g["prompt_ids"]))
        out = json.loads(run("generate", "--model", os.path.join(GOLDEN, "llama_gqa"), "--prompt-ids", ids,
                             "--max-tokens", "16", "--temperature", "0", "--ignore-eos", "--logprobs", "3",
                             "--json").stdout)
        self.assertEqual(out["prompt_ids"], g["prompt_ids"])
        self.assertEqual(out["ids"], g["greedy"])
        self.assertIsInstance(out["text"], str)
        self.assertEqual(len(out["logprobs"]), 16)
        for step, want in zip(out["logprobs"], g["greedy_logprobs"]):
            self.assertEqual(len(step), 3)
            self.assertEqual(set(step[0].keys()), {"id", "logprob"})
            self.assertAlmostEqual(step[0]["logprob"], want, delta=2e-3)
        self.assertEqual(out["finish_reason"], "length")

    def test_generate_text_prompt_adds_bos(self):
        g = golden("qwen3")["cases"][0]
        out = json.loads(run("generate", "--model", os.path.join(GOLDEN, "qwen3"), "--prompt", g["prompt"],
                             "--max-tokens", "4", "--temperature", "0", "--ignore-eos", "--json").stdout)
        self.assertEqual(out["prompt_ids"], g["prompt_ids"])
        self.assertEqual(out["ids"], g["greedy"][:4])

    def test_seed_reproducible(self):
        args = ["generate", "--model", os.path.join(GOLDEN, "mistral"), "--prompt", "hello there",
                "--max-tokens", "8", "--temperature", "1.0", "--top-p", "0.9", "--top-k", "50", "--seed", "42",
                "--json"]
        a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
        self.assertEqual(a["ids"], b["ids"])
        self.assertEqual(a["seed"], 42)

    def test_score_json_matches_hf(self):
        g = golden("qwen2")["cases"][2]
        out = json.loads(run("score", "--model", os.path.join(GOLDEN, "qwen2"), "--ids",
                             ",".join(map(str, g["prompt_ids"])), "--top", "5", "--json").stdout)
        self.assertEqual(set(out.keys()), {"logprobs", "top", "perplexity"})
        self.assertEqual(len(out["logprobs"]), len(g["prompt_ids"]) - 1)
        for got, want in zip(out["logprobs"], g["logprobs"]):
            self.assertAlmostEqual(got, want, delta=2e-3)
        self.assertEqual(len(out["top"]), len(out["logprobs"]))
        self.assertEqual(len(out["top"][0]), 5)
        import math
        self.assertAlmostEqual(out["perplexity"], math.exp(-sum(out["logprobs"]) / len(out["logprobs"])), places=3)

    def test_tokenize_roundtrip(self):
        g = golden("llama_gqa")["cases"][2]
        model = os.path.join(GOLDEN, "llama_gqa")
        with_bos = json.loads(run("tokenize", "--model", model, "--text", g["prompt"], "--add-special",
                                  "--json").stdout)
        self.assertEqual(with_bos["ids"], g["prompt_ids"])
        without = json.loads(run("tokenize", "--model", model, "--text", g["prompt"], "--json").stdout)
        self.assertEqual(without["ids"], g["prompt_ids"][1:])
        text = json.loads(run("tokenize", "--model", model, "--decode", ",".join(map(str, without["ids"])),
                              "--json").stdout)
        self.assertEqual(text["text"], g["prompt"])

    def assert_clean_error(self, p, *needles):
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stdout, "")
        line = p.stderr.strip()
        self.assertEqual(len(line.splitlines()), 1, line)
        for n in needles:
            self.assertIn(n, line)

    def test_errors(self):
        model = os.path.join(GOLDEN, "llama_gqa")
        self.assert_clean_error(run("generate", "--model", "/nonexistent", "--prompt", "x", check=False),
                                "/nonexistent")
        self.assert_clean_error(run("generate", "--model", model, "--prompt", "x", "--temperature", "-1",
                                    check=False), "temperature")
        self.assert_clean_error(run("generate", "--model", model, "--prompt", "x", "--top-p", "nan",
                                    check=False), "top-p")
        self.assert_clean_error(run("generate", "--model", model, "--prompt-ids", "1,99999", check=False),
                                "99999")
        self.assert_clean_error(run("generate", "--model", model, "--prompt-ids", "1,x", check=False),
                                "prompt-ids")
        self.assert_clean_error(run("generate", "--model", model, "--bogus", "1", check=False), "--bogus")
        self.assert_clean_error(run("score", "--model", model, "--ids", "5", check=False), "two")
        p = run("frobnicate", check=False)
        self.assertEqual(p.returncode, 2)

    def test_broken_checkpoints(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "m")
            shutil.copytree(os.path.join(GOLDEN, "llama_gqa"), d)
            st = os.path.join(d, "model.safetensors")
            with open(st, "rb") as f:
                data = f.read()
            write(st, data[: len(data) // 2], "wb")
            self.assert_clean_error(run("generate", "--model", d, "--prompt", "x", check=False),
                                    "model.safetensors", "truncated")
            write(st, data, "wb")
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            cfg["architectures"] = ["FalconForCausalLM"]
            write(os.path.join(d, "config.json"), json.dumps(cfg))
            self.assert_clean_error(run("generate", "--model", d, "--prompt", "x", check=False),
                                    "config.json", "FalconForCausalLM")
            cfg["architectures"] = ["LlamaForCausalLM"]
            cfg["num_hidden_layers"] = 3
            write(os.path.join(d, "config.json"), json.dumps(cfg))
            self.assert_clean_error(run("generate", "--model", d, "--prompt", "x", check=False),
                                    "missing tensor", "model.layers.2")
            write(os.path.join(d, "config.json"), "{ not json")
            self.assert_clean_error(run("generate", "--model", d, "--prompt", "x", check=False),
                                    "config.json")

    def test_default_model_runs(self):
        out = json.loads(run("generate", "--model", os.path.join(ROOT, "models", "default"), "--prompt",
                             "Once upon a time", "--max-tokens", "8", "--temperature", "0", "--ignore-eos",
                             "--json").stdout)
        self.assertEqual(len(out["ids"]), 8)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
