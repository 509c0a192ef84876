"""Fine-tune a causal LM to generate labels: same as `trainer-ext train`.

Usage: accelerate launch scripts/train.py --config RECIPE.yaml [--key value ...]
       (RECIPE: e.g. trainer_ext/configs/recipes/moderation_lora_all.yaml)
       python scripts/train.py --config RECIPE.yaml [--key value ...]
"""

import sys

from trainer_ext.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
