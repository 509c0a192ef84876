"""Classify texts with a trained run (local directory or Hub repo): same as `trainer-ext predict`.

Usage: python scripts/predict.py --model RUN_DIR_OR_HUB_ID --input FILE.csv [--output preds.csv]
       echo "a message" | python scripts/predict.py --model RUN_DIR_OR_HUB_ID
"""

import sys

from trainer_ext.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
