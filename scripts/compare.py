"""Run the whole study (methods, baselines, calibration, transfer): same as `trainer-ext compare`.

Usage: python scripts/compare.py --output_dir runs/compare [--rows zero-shot lora-all] [recipe flags]
"""

import sys

from trainer_ext.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
