"""A `python -m pneumo ...` command line run in the test's own process, on one thread as the subprocesses it stands in
for (`OMP_NUM_THREADS=1`): a process start costs ~6 s, so only the runs that must be killed or signalled get one."""

from __future__ import annotations

import torch

from pneumo.cli import main


def run_in_process(command: list[str]) -> None:
    """Run ``command`` (``[python, "-m", "pneumo", SUBCOMMAND, ...]``) through `pneumo.cli.main`; it must exit 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(command[command.index("pneumo") + 1:])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, command
