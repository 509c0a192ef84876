"""The study (`trainer-ext compare`): which way of turning a causal LM into a classifier works on your
data."""
