"""wipe_demo.py: the test program for keystore.py, run by remanence as `python wipe_demo.py leaky`
(or `clean`). It takes the secret the harness hands it, gives it to the twin under test and stops at
the two checkpoints that leaky.toml and clean.toml list: `in_use`, then `after_wipe`.
"""

from __future__ import annotations

import sys

from keystore import CleanKey, LeakyKey
from remanence import sdk

TWINS = {"leaky": LeakyKey, "clean": CleanKey}


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in TWINS:
        sys.stderr.write(f"usage: wipe_demo.py {'|'.join(TWINS)}\n")
        sys.exit(sdk.EXIT_USAGE)
    length = sdk.start()               # fd 3, `ready 1`, the canary; returns the secret's length
    buffer = bytearray(length)
    sdk.read_secret_into(buffer)       # the secret, straight into our buffer (no other copy)
    key = TWINS[argv[0]](buffer)       # the code under test takes the key
    where = sdk.address_of(key.secret)  # where the key is kept, told to the harness for its report
    sdk.checkpoint("in_use", where)    # the harness snapshots our memory while this waits
    key.wipe()
    sdk.checkpoint("after_wipe", where)
    sdk.done()                         # exit 0


if __name__ == "__main__":
    main(sys.argv[1:])
