"""Publish a training run (or the demo Space) on the Hugging Face Hub: same as `trainer-ext push`.

Usage: python scripts/push_to_hub.py OUTPUT_DIR --repo_id USER/NAME [--private] [--revision B] [--dry_run]
"""

import sys

from trainer_ext.cli.push import main

if __name__ == "__main__":
    sys.exit(main())
