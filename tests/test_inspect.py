"""`python -m bnstudy.inspect`: signal propagation at init, through the real CLI."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import TINY, run_cli


def inspect_cli(*args: str):
    return run_cli(*args, module="bnstudy.inspect")


@pytest.mark.kernels
@pytest.mark.slow
def test_unnormalized_signal_grows_with_depth_and_batchnorm_stays_flat(tmp_path):
    result = inspect_cli(
        "-m", *TINY, "model=resnet34", "norm=batchnorm,none", f"--out={tmp_path}", "--plot"
    )
    assert result.returncode == 0, result.stderr
    assert "activation std at init after each block (resnet34, width 8" in result.stdout
    assert "weight-gradient norm per stage after one backward pass" in result.stdout
    frame = pd.read_csv(tmp_path / "signal_at_init.csv")
    assert sorted(frame["config"].unique()) == ["batchnorm", "none"]
    for config, rows in frame.groupby("config"):
        blocks = rows[rows["kind"] == "block"].sort_values("depth")["act_std"].to_numpy()
        assert len(blocks) == 16  # resnet34: 3 + 4 + 6 + 3 residual blocks
        if config == "none":
            assert blocks[-1] > 5 * blocks[0]  # grows with depth
        else:
            assert blocks.max() < 2 * blocks.min()  # flat
    logits = frame[frame["kind"] == "logits"].set_index("config")["act_std"]
    assert logits["none"] != logits["batchnorm"]
    assert frame["grad_norm"].notna().all() and (frame["grad_norm"] > 0).all()
    assert list(tmp_path.glob("signal_at_init-resnet34-*.png"))


def test_several_values_without_m_is_one_line_naming_the_fix(tmp_path):
    result = inspect_cli(*TINY, "norm=batchnorm,none", f"--out={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bnstudy.inspect: error: norm=batchnorm,none gives several values; add -m to inspect each"
    )
