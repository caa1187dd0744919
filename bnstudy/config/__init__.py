"""The config and everything checked before a run folder exists: the schema, the checks of
values, the preflight (files, memory, output root, tuned lr) and the Hydra callbacks that
check every cell of a sweep and guard a single run's folder.

Imports: every package below it (records, errors, data, study, training, sweeps, analysis).
"""
