"""From run folders to what a reader sees: collecting runs (summaries, epochs, layers, the
sweeps' grids and the queue), statistics, tables, the tuned lr per cell, and figures.

Imports: records, errors, study (variant labels), sweeps (the queue); data only for a
dataset's chance level.
"""
