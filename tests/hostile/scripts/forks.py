"""Leaves children behind and exits: a background process holding the output pipes and
a double-forked one (orphaned at once), both in the trial's process group. Their pids go
to the file argv[1]."""

import os
import subprocess
import sys
import time

from _train import finish, say  # type: ignore[import-not-found]  # (its own folder)

import rung as det

holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(600)
        os._exit(0)
    os.write(write_end, str(grandchild).encode())
    os._exit(0)
os.waitpid(child, 0)
orphan = int(os.read(read_end, 32))
with open(sys.argv[1], "w") as out:
    out.write(f"{holder.pid} {orphan}")
with det.core.init() as core_context:
    finish(core_context)
say("leaving my children behind")
