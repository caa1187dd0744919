"""Signal propagation at init, without training:

    python -m bnstudy.inspect model=resnet101 norm=none dataset=fashion_mnist
    python -m bnstudy.inspect -m norm=batchnorm,affine,bnminus,none debug=fast --plot

Takes the overrides of `bnstudy.run` (with -m, every combination, as a sweep would run them)
and builds each model exactly as a run starts it, data-dependent inits included. On the fixed
probe batch of layers.csv (bnstudy/training/diagnostics.py, with batch statistics) it measures the
output std after the stem, every residual block and the classifier (the logits), and, after
one backward pass of the cross-entropy, the weight-gradient norm of each stage. Prints both
as tables, writes them as CSV and, with --plot, draws std against depth, one line per config.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser

from bnstudy.config.preflight import load_config, resolved
from bnstudy.config.schema import resolve_device
from bnstudy.errors import USER_ERRORS, ConfigError, one_line
from bnstudy.records import (
    DATASET,
    MODEL,
    NORM,
    SIGNAL_KINDS,
    WIDTH,
    identity,
    stage_name,
    write_atomic,
)
from bnstudy.study.controls import DEFAULTS, variant_label
from bnstudy.sweeps.grid import combinations
from bnstudy.training.diagnostics import PROBE_IMAGES, probe_of, signal_at_init
from bnstudy.training.parts import build_parts

PROG = "bnstudy.inspect"
LABEL = "config"  # the column naming each inspected config


def configs(overrides: list[str], multirun: bool) -> list:
    """The checked config of each override combination (one without -m)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if not multirun:
        if sweeps:
            raise ConfigError(f"{sweeps[0]} gives several values; add -m to inspect each")
        return [load_config(overrides)]
    base = load_config([o.input_line for o in parsed if not o.is_sweep_override()])
    params = base.hydra.sweeper.get("params") or {}
    return [load_config(combo) for combo in combinations(params, overrides)]


def inspect_config(cfg) -> pd.DataFrame:
    """One config's signal rows (LayerStats of the stem, blocks and logits), as a frame."""
    parts = build_parts(cfg, resolve_device(cfg.device.name))
    x, y = probe_of(parts, cfg)
    rows = [asdict(r) for r in signal_at_init(parts.model, x, y) if r.kind in SIGNAL_KINDS]
    return pd.DataFrame(rows)


def _labels(identities: list[dict]) -> list[str]:
    """A short name per config: its variant (norm and controls) where those vary, and every
    other key that varies between the configs (the model aside: it makes its own table)."""
    keys = [
        k
        for k in identities[0]
        if k not in ("run_id", MODEL) and len({str(i.get(k)) for i in identities}) > 1
    ]
    labels = []
    for ident in identities:
        parts = [variant_label(ident)] if any(k in (NORM, *DEFAULTS) for k in keys) else []
        parts += [f"{k}={ident[k]}" for k in keys if k not in (NORM, *DEFAULTS)]
        labels.append(", ".join(parts) or variant_label(ident))
    return labels


def tables(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per model: the activation std at each depth, and the gradient norm of each stage."""
    out = []
    for model, rows in frame.groupby(MODEL, sort=False):
        order = list(dict.fromkeys(rows[LABEL]))
        std = rows.pivot_table(index=["depth", "layer"], columns=LABEL, values="act_std")
        std = std.sort_index(level="depth")[order]
        # The L2 norm over a stage's sites: sqrt of the sum of their squared norms.
        squares = rows.assign(grad_sq=rows["grad_norm"] ** 2)
        grad = squares.pivot_table(index="stage", columns=LABEL, values="grad_sq", aggfunc="sum")
        grad = (grad**0.5)[order].rename(index=stage_name)
        what = f"{model}, width {rows[WIDTH].iloc[0]}, {rows[DATASET].iloc[0]}"
        out.append((f"activation std at init after each block ({what})", std))
        out.append((f"weight-gradient norm per stage after one backward pass ({what})", grad))
    return out


def plot(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Std against depth, one line per config, log scale: a PNG per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnstudy.analysis.look import log_line, save, styles, zero_floor

    written = []
    for model, rows in frame.groupby(MODEL, sort=False):
        order = list(dict.fromkeys(rows[LABEL]))
        style = styles(order)
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        floor = zero_floor(rows["act_std"])
        for label in order:
            line = rows[rows[LABEL] == label].sort_values("depth")
            log_line(ax, line["depth"], line["act_std"], floor, label=label, **style[label])
        ax.set_yscale("log")
        ax.set_xlabel("depth (0 = stem, then each residual block; last = logits)")
        ax.set_ylabel("std of the output on the probe batch")
        ax.grid(alpha=0.3, which="both")
        what = f"{model}, width {rows[WIDTH].iloc[0]}, {rows[DATASET].iloc[0]}"
        ax.set_title(
            f"Signal at init, {PROBE_IMAGES} probe images, batch statistics\n{what}", fontsize=10
        )
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        slug = hashlib.sha256(",".join(order).encode()).hexdigest()[:6]
        written.append(save(plt, fig, out / f"signal_at_init-{model}-{slug}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description="Signal propagation at init, without training. Other arguments are "
        "bnstudy.run overrides (model=resnet101 norm=none ...).",
    )
    parser.add_argument("-m", "--multirun", action="store_true", help="every combination")
    parser.add_argument("--plot", action="store_true", help="also draw std against depth")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/inspect"), help="folder for CSV and PNG"
    )
    args, overrides = parser.parse_known_args(argv)
    try:
        frames = []
        chosen = configs(overrides, args.multirun)
        idents = [identity(resolved(cfg)) for cfg in chosen]
        for cfg, ident, label in zip(chosen, idents, _labels(idents), strict=True):
            named = {LABEL: label, MODEL: ident[MODEL], WIDTH: ident[WIDTH]}
            frames.append(inspect_config(cfg).assign(**named, **{DATASET: ident[DATASET]}))
    except USER_ERRORS as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    frame = pd.concat(frames, ignore_index=True)
    for title, table in tables(frame):
        print(f"{title}\n{table.to_string(float_format=lambda v: f'{v:.4g}')}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "signal_at_init.csv"
    write_atomic(csv, frame.to_csv(index=False).encode())
    print(f"table: {csv}")
    if args.plot:
        for path in plot(frame, args.out):
            print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
