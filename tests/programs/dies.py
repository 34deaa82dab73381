"""dies.py MODE: a test program for expected crashes. It holds the secret in a bytearray (plain heap memory, so a
core of it holds the key), stops at `in_use`, then at `act`, and then ends the way MODE says:
segv (kills itself with SIGSEGV), nocore (sets its own core limit to 0, soft and hard, then SIGSEGV), term (SIGTERM,
which dumps no core), exit (finishes normally), hang (never ends), nocore_wait (sets its core limit to 0, then
finishes normally: for a harness-provoked kernel core)."""
from __future__ import annotations

import os
import resource
import signal
import sys
import time

from remanence import sdk

MODE = sys.argv[1]
key = bytearray(sdk.start())
sdk.read_secret_into(key)
if MODE.startswith("nocore"):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sdk.checkpoint("in_use", sdk.address_of(key))
sdk.checkpoint("act", sdk.address_of(key))
if MODE in ("segv", "nocore"):
    os.kill(os.getpid(), signal.SIGSEGV)
elif MODE == "term":
    os.kill(os.getpid(), signal.SIGTERM)
elif MODE == "hang":
    while True:
        time.sleep(60)
sdk.done()
