"""keep_freed_memory: glibc serves large blocks from its heap instead of a fresh mmap each (which a CPU training
step would page-fault in again every step)."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from cityscapes_lab.memory import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once, then a no-op
block = ctypes.create_string_buffer(256 << 20)  # far above glibc's largest mmap threshold (32 MiB)
print(libc.mallinfo2().hblkhd >= 256 << 20)  # served by its own mmap?
"""


def _mmapped(mode: str) -> bool:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True)
    if "mallinfo2" in result.stderr:
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def test_large_blocks_come_from_the_heap_once_freed_memory_is_kept():
    assert _mmapped("default")
    assert not _mmapped("keep")
