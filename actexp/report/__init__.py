"""What a run shows: the lines a job ends with, plots, W&B tracking and the sweep table; imports store
and below."""
