"""dsee-bench: DSEE engines timed side by side with the dense baselines users would otherwise ship, with their
size, FLOPs and task metric beside the speed-ups."""
