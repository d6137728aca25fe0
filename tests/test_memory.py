"""The allocator policy (mini_llm/memory.py): after keep_freed_memory(), a large block freed and
allocated again reuses its pages (no page faults); a user's own malloc settings are left alone.
Each case runs in a fresh interpreter, since the policy is per process."""
import json
import os
import subprocess
import sys

import pytest

from mini_llm import memory

# allocate and free a 64 MiB array, then count the page faults of allocating and writing it again
SECOND_TOUCH = """
import json, resource, sys
import numpy as np
from mini_llm import memory
kept = memory.keep_freed_memory()
a = np.ones(16 * 2 ** 20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 * 2 ** 20, np.float32)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "describe": memory.describe()}))
"""


def second_touch(**env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", SECOND_TOUCH], env={**environment, **env},
                            stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(not memory.on_glibc(), reason="the policy is for glibc's malloc")
def test_a_freed_block_is_reused_without_page_faults():
    got = second_touch()
    assert got["kept"] and got["describe"].startswith("memory: freed blocks kept")
    assert got["faults"] <= 16, got        # 64 MiB of fresh 4 KiB pages would be 16384 faults


@pytest.mark.skipif(not memory.on_glibc(), reason="the policy is for glibc's malloc")
def test_the_users_malloc_settings_win():
    got = second_touch(MALLOC_ARENA_MAX="2")
    assert not got["kept"] and got["describe"] == "memory: malloc's defaults"
