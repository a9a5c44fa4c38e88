"""The install tree (cmake/TroupeInstall.cmake): `cmake --install` of the current build into a temporary
prefix, the tree moved elsewhere (it must not depend on where it was installed), then
- bin/* have RUNPATH $ORIGIN/../lib first (and no RPATH, no path into the build or the first prefix);
- lib/ holds CAF and yaml-cpp, and never glibc, the GCC runtime, the CUDA driver or the CUDA toolkit;
- the installed troupe generates from share/troupe/models/default and serves share/troupe/configs/default.yaml
  from another directory with a clean environment (env -i PATH=/usr/bin:/bin), greedy ids equal to the
  build-tree binary's, and ldd resolves the bundled libraries from the tree's lib/.
Usage: test_install.py CMAKE BUILD_DIR BUILD_TREE_TROUPE SOURCE_DIR"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

CMAKE, BUILD, BUILD_TROUPE, SOURCE = sys.argv[1:5]
CLEAN_ENV = ["env", "-i", "PATH=/usr/bin:/bin"]
GENERATE = ["generate", "--prompt", "hi", "--max-tokens", "4", "--temperature", "0", "--ignore-eos",
            "--device", "cpu", "--json"]
REQUIRED_LIBS = ["libcaf_core.so.0.17.6", "libyaml-cpp.so.0.7"]
# Never in lib/: glibc and its loader, the GCC runtime, the CUDA driver, the CUDA toolkit and NCCL.
FORBIDDEN_LIBS = re.compile(r"^(ld-linux|lib(c|m|dl|rt|pthread)\.so|libstdc\+\+|libgcc_s|libcuda\.so|libnvidia-|"
                            r"libcudart|libcublas|libnccl)")


def readelf_dynamic(path):
    """(needed names, {'RUNPATH': [...], 'RPATH': [...]}) from `readelf -d`."""
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)
    paths = {}
    for kind, value in re.findall(r"\((RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out):
        paths[kind] = value.split(":")
    return needed, paths


class InstallTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="troupe-install-")
        staged = os.path.join(cls.tmp, "staged")
        env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
        t0 = time.time()
        p = subprocess.run([CMAKE, "--install", BUILD, "--prefix", staged], capture_output=True, text=True, env=env)
        cls.install_s = time.time() - t0
        if p.returncode != 0:
            raise AssertionError(f"cmake --install failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        # Relocatable: the tree works from wherever it is moved (a space in the path on purpose).
        cls.root = os.path.join(cls.tmp, "moved tree")
        shutil.move(staged, cls.root)
        cls.staged = staged
        cls.troupe = os.path.join(cls.root, "bin", "troupe")
        cls.elsewhere = os.path.join(cls.tmp, "elsewhere")
        os.mkdir(cls.elsewhere)
        print(f"cmake --install took {cls.install_s:.2f} s", file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def bin_files(self):
        d = os.path.join(self.root, "bin")
        return [os.path.join(d, n) for n in sorted(os.listdir(d))]

    def test_runpath(self):
        self.assertTrue(os.access(self.troupe, os.X_OK), self.troupe)
        for exe in self.bin_files():
            needed, paths = readelf_dynamic(exe)
            name = os.path.basename(exe)
            self.assertIn("RUNPATH", paths, f"{name}: no RUNPATH")
            self.assertNotIn("RPATH", paths, f"{name}: DT_RPATH instead of DT_RUNPATH")
            runpath = paths["RUNPATH"]
            self.assertEqual(runpath[0], "$ORIGIN/../lib", f"{name}: RUNPATH {runpath}")
            # An empty entry would search the working directory (CMake pads build-tree rpaths with ':').
            self.assertNotIn("", runpath, f"{name}: RUNPATH {runpath} has an empty entry")
            for entry in runpath:
                self.assertFalse(entry.startswith(os.path.realpath(BUILD)) or entry.startswith(BUILD),
                                 f"{name}: RUNPATH entry {entry} points into the build tree")
                self.assertFalse(entry.startswith(self.tmp), f"{name}: RUNPATH entry {entry} points into the prefix")
            if not any(n.startswith("libcudart") for n in needed):
                self.assertEqual(runpath, ["$ORIGIN/../lib"], f"{name}: a CPU build needs no other entry")

    def test_bundled_libs(self):
        lib = os.path.join(self.root, "lib")
        names = sorted(os.listdir(lib))
        for want in REQUIRED_LIBS:
            self.assertIn(want, names)
        needed = set()
        for exe in self.bin_files():
            needed.update(readelf_dynamic(exe)[0])
        for n in needed:
            if n.startswith("libcaf_io"):
                self.assertIn(n, names)
        for n in names:
            self.assertIsNone(FORBIDDEN_LIBS.match(n), f"lib/{n} must not be bundled")
            path = os.path.join(lib, n)
            self.assertFalse(os.path.islink(path), f"lib/{n} is a symlink")
            self.assertTrue(os.path.isfile(path), f"lib/{n}")
            # The executables' RUNPATH does not apply to libraries' own dependencies: every bundled library
            # must be one the executables ask for directly (cmake/troupe_bundle_libs.cmake).
            self.assertIn(n, needed, f"lib/{n} is only a transitive dependency; it would not be found")

    def test_share(self):
        share = os.path.join(self.root, "share", "troupe")
        for rel in ["configs/default.yaml", "configs/cpu.yaml", "models/default/config.json",
                    "models/default/model.safetensors", "models/default/tokenizer.json", "dashboards/troupe.json"]:
            self.assertTrue(os.path.isfile(os.path.join(share, rel)), rel)

    def test_generate_clean_env(self):
        model = os.path.join(self.root, "share", "troupe", "models", "default")
        p = subprocess.run(CLEAN_ENV + [self.troupe] + GENERATE[:1] + ["--model", model] + GENERATE[1:],
                           cwd=self.elsewhere, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(len(out["ids"]), 4, out)
        self.assertIsInstance(out["text"], str)
        self.assertEqual(out["finish_reason"], "length")
        # The same greedy ids as the build-tree binary on the source tree's model.
        src_model = os.path.join(SOURCE, "models", "default")
        ref = subprocess.run([BUILD_TROUPE] + GENERATE[:1] + ["--model", src_model] + GENERATE[1:],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(ref.returncode, 0, ref.stderr)
        self.assertEqual(out["ids"], json.loads(ref.stdout)["ids"])

    def test_serve_installed_config(self):
        share = os.path.join(self.root, "share", "troupe")
        args = ["serve", "--config", os.path.join(share, "configs", "default.yaml"),
                "--model", os.path.join(share, "models", "default"), "--device", "cpu", "--port", "0",
                "--max-kv-tokens", "4096", "--threads", "1"]
        proc = subprocess.Popen(CLEAN_ENV + [self.troupe] + args, cwd=self.elsewhere, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            self.assertIn("listening on", line, proc.stderr.read() if proc.poll() is not None else "")
            port = int(line.strip().rsplit(":", 1)[1])
            deadline = time.time() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                self.assertLess(time.time(), deadline, "server never became ready")
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def test_check_config_from_share(self):
        # configs/default.yaml names `model: models/default` relative to the working directory: share/troupe.
        share = os.path.join(self.root, "share", "troupe")
        p = subprocess.run(CLEAN_ENV + [self.troupe, "check-config", os.path.join("configs", "default.yaml")],
                           cwd=share, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_ldd_resolves_from_tree(self):
        p = subprocess.run(CLEAN_ENV + ["ldd", self.troupe], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        resolved = {}
        for line in p.stdout.splitlines():
            m = re.match(r"\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$", line)
            if m:
                resolved[m.group(1)] = m.group(2)
        for name, where in resolved.items():
            # The CUDA toolkit is the host's (RUNPATH names its usual directories); anything else must resolve.
            if not re.match(r"lib(cudart|cublas|cublasLt|nccl)\.so", name):
                self.assertNotEqual(where, "not found", f"{name}: not found\n{p.stdout}")
        lib = os.path.realpath(os.path.join(self.root, "lib"))
        for want in REQUIRED_LIBS:
            self.assertIn(want, resolved, p.stdout)
            self.assertEqual(os.path.dirname(os.path.realpath(resolved[want])), lib, f"{want} => {resolved[want]}")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
