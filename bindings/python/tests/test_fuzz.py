"""A short run of the untrusted unpickler's fuzzer (bindings/python/fuzz/):
every case must load or raise tpde.TpdeError, under a memory and time limit.
CI's fuzz step runs it longer."""

import os
import subprocess
import sys

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz",
                    "fuzz_unpickler.py")


def test_fuzz_unpickler_briefly(tmp_path):
    r = subprocess.run([sys.executable, FUZZ, "--seconds", "4", "--seed", "1",
                        "--artifacts", str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " 0 failed" in r.stdout, r.stdout
