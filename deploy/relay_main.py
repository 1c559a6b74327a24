"""Entry point of the standalone binary (deploy/build-binary.sh): the `relay` command.

Not part of the relay package: PyInstaller freezes this script with relay and its
dependencies, so the binary is `relay serve ...` / `relay chat ...` with no Python installed.
"""

import sys

from relay.cli import main

if __name__ == "__main__":
    sys.exit(main())
