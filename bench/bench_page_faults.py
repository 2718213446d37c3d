"""Minor page faults of reallocated 48 MB tensors, with and without `pneumo.allocator.hold_freed_memory`.

    python bench/bench_page_faults.py [--tensors 20]

By default glibc maps every large block afresh and the kernel zero-fills each page again (~12k faults per 48 MB
tensor); held, the heap is reused. The counts depend on the libc and the kernel (transparent huge pages fault 2 MB
at a time), so they are measured here, on a named machine, not asserted in a unit test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

_FAULTS = """
import resource, sys, torch
from pneumo.allocator import hold_freed_memory
held = hold_freed_memory() if sys.argv[1] == "hold" else False
torch.set_num_threads(1)
for _ in range(3):  # warm up: the first allocations fault in any case
    torch.ones(12 * 2**20).add_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[2])):  # what a training step does: free and allocate the same large buffers again
    torch.ones(12 * 2**20).add_(1)
print(held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, tensors: int) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode, str(tensors)], capture_output=True, text=True,
                         check=True)
    held, count = out.stdout.split()
    return held == "True", int(count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=20)
    args = parser.parse_args()
    pages = args.tensors * 48 * 2**20 // 4096
    (_, default), (held, kept) = faults("default", args.tensors), faults("hold", args.tensors)
    record("page_faults", {"tensors": args.tensors, "pages_allocated": pages, "default_faults": default,
                           "held": held, "held_faults": kept})
    print(f"| {args.tensors} x 48 MB tensors reallocated ({pages} pages) | default {default} minor faults | "
          f"held ({held}) {kept} |")


if __name__ == "__main__":
    main()
