"""Fine-tune a causal LM to generate labels: same as `trainer-ext train`.

Usage: accelerate launch scripts/train.py --config trainer_ext/configs/recipes/moderation_lora_all.yaml [--key value ...]
       python scripts/train.py --config RECIPE.yaml [--key value ...]
"""

import sys

from trainer_ext.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
