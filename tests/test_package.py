"""What importing the package sets up for the process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Import the package first, as `python -m mglightning.<entry>` does; count the page faults of
# filling one fresh 64 MB tensor.
FAULTS_OF_A_FRESH_TENSOR = """
import resource, mglightning, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(16 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(environment: dict) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FRESH_TENSOR], env=environment,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
                    reason="transparent huge pages are off on this machine")
def test_importing_the_package_backs_large_tensors_with_huge_pages_unless_told_not_to():
    environment = {key: value for key, value in os.environ.items()
                   if key != "THP_MEM_ALLOC_ENABLE"}
    default = page_faults(environment)
    small_pages = page_faults({**environment, "THP_MEM_ALLOC_ENABLE": "0"})
    assert small_pages >= 16 * 2**20 * 4 // 4096 // 2  # ~one fault per 4 KB page
    assert default < small_pages / 4  # 2 MB pages (some may fall back to 4 KB ones)
