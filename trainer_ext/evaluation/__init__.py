"""Evaluation of generated labels: classification metrics and the files a run reports them in."""
