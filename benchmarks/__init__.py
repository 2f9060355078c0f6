"""Speed figures for the lab, as ratios measured in one run (see `python -m benchmarks`)."""
