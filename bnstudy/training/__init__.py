"""Training one run: the CPU kernels and fast paths (precision, channels_last, compile), the
optimizers and schedules, building a run's parts from its config, the epoch loop with its
divergence check, diagnostics and observers while training, and the throughput measurements.

Imports: records, errors, data, study.
"""
