"""Benchmark training and label-decoding speed against TRL and `generate`: same as `trainer-ext bench`.

Usage: python scripts/bench.py [--only CONFIG ...] [--steps 20] [--force] [--key value ...]
"""

import sys

from trainer_ext.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
