"""Process-wide CPU settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys, torch
from spkemb.utils.runtime import tune_cpu_allocator
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
tuned = tune_cpu_allocator() if sys.argv[1] == 'tuned' else False
before = rss()
x = torch.ones(3 * 2**29 // 4)  # one 1.5-GiB block, as a big batch's spectrogram makes
del x
print(tuned, (rss() - before) / 2**30)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_keeps_freed_memory_for_the_next_batch() -> None:
    """Tuned, a freed 1.5-GiB block stays with the process (the next batch reuses it without page
    faults); untuned, glibc returns it at once. The former setting (1-GiB thresholds) failed this."""
    out = {}
    for mode in ("tuned", "default"):
        res = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        tuned, kept = res.stdout.split()
        out[mode] = (tuned == "True", float(kept))
    assert out["tuned"][0] and out["tuned"][1] > 1.25
    assert not out["default"][0] and out["default"][1] < 0.5
