"""Moved: `python -m swapper.export`. This name still runs it for one release, with a note."""

import runpy
import sys

if __name__ == "__main__":
    print("note: training.export is now swapper.export; the old name goes in the next release", file=sys.stderr)
    runpy.run_module("swapper.export", run_name="__main__", alter_sys=True)
