"""Sweeps and their processes: a sweep's cells, its ledger entries and end report, SLURM
(submission checks, the queue), stopping a job (signals, requeue, the owner watchdog) and one
GPU per concurrent run.

Imports: records, errors — no torch, so that a launcher and a report stay light.
"""
