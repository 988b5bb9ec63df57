"""The verbs: tune, prune and export, each driving the mechanisms below it (tuning, pruning, speed, export,
checkpoint) from its inputs to a saved output. dsee_deploy's top level (dd.tune, dd.prune, dd.export) and the
commands call them here; bench and serve sit above."""
