"""Moved: `python -m swapper.swap`. This name still runs it for one release, with a note."""

import runpy
import sys

if __name__ == "__main__":
    print("note: training.swap is now swapper.swap; the old name goes in the next release", file=sys.stderr)
    runpy.run_module("swapper.swap", run_name="__main__", alter_sys=True)
