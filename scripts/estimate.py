"""Estimate the peak memory of a training step from a model config: same as `trainer-ext estimate`.

Usage: python scripts/estimate.py --model gpt-j-6b --quantization 8bit --method lora-all --gpu-memory 11GB
"""

import sys

from trainer_ext.cli.estimate import main

if __name__ == "__main__":
    sys.exit(main())
