"""Run records: a run's identity (keys), what its files hold (fields), its folder (folder),
atomic file writes (files) and a sweep's ledger (ledger). Plain Python: no torch, no Hydra.

Imports: only the standard library and each other. The names below are the records' interface,
re-exported so that callers write `from bnstudy.records import RunFolder`.
"""

from bnstudy.records.fields import (  # noqa: F401
    EPOCH_COLUMNS,
    FINISHED,
    LAYER_COLUMNS,
    NUMBER_FORMAT,
    OPTIMIZATION,
    SIGNAL_KINDS,
    SMALL_GAMMA,
    SUMMARY_COLUMNS,
    EpochMetrics,
    LayerStats,
    Summary,
    from_csv,
    progress,
    stage_name,
)
from bnstudy.records.files import (  # noqa: F401
    RecordsError,
    append_csv,
    complete_lines,
    held,
    read_csv,
    write_atomic,
    write_csv,
)
from bnstudy.records.folder import (  # noqa: F401
    CHECKPOINT_FILE,
    LAYERS_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    RunFolder,
)
from bnstudy.records.keys import (  # noqa: F401
    BATCH_SIZE,
    DATASET,
    MODEL,
    NON_IDENTITY_KEYS,
    NORM,
    SEED,
    WIDTH,
    identity,
    run_id,
    run_path,
)
