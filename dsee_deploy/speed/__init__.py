"""Everything that measures speed, below every verb: it imports nothing from bench, pruning, checkpoint or tuning
(an import-linter contract in pyproject.toml), and pruning, export and bench use it.

- timing: interleaved timing of runners, and the speed-up of one over another
- machine: what a figure was measured on (CPU, flags, runtime versions)
- engines: a geometry's random-weight engines, exported as dsee-export makes them, and their runners
- passes: a grid of engines timed against the dense one in confirmed passes
- latency: the latency model (a table of a geometry's costs), its key and its cache
- speedup: the measured speed-up of exported engines against a dense engine of their geometry
"""
