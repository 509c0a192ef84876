"""Training: tokenization with completion masking, the collator, `LabelTrainer`, recipes and the pipeline."""
