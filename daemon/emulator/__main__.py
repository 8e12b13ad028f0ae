"""``python -m galtea_local_daemon.emulator``: the same as ``galtea-local emulator``."""

import argparse
import sys

from galtea_local_daemon.emulator.cli import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="galtea-local emulator", description="Run the local Galtea API emulator.")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
