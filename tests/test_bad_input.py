"""Every bad input: one line naming the key or file and the fix, exit status 2, nothing written.

Each case runs the real CLI in a subprocess; none of them trains, so they take seconds.
"""

import contextlib
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from bnstudy import records
from bnstudy.config import preflight
from bnstudy.records import RunFolder, Summary
from tests.helpers import (
    TINY,
    make_config,
    run_cli,
    write_fashion_mnist,
    write_idx,
    write_run,
)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bnstudy: error:"), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.widht=8"], "Key 'widht' not in 'ModelConfig'"),
        (["batch_size=abc"], "batch_size"),
        (
            ["norm=layernorm"],
            "norm/layernorm'; choose one of: affine, batchnorm, bnminus, groupnorm, none",
        ),
        (["optim=rmsprop"], "optim/rmsprop'; choose one of: adam, sgd"),
        (["optim=sgd_schema"], "optim=sgd_schema is not a choice; choose one of: adam, sgd"),
        (["batch_size=0"], "batch_size=0 is impossible"),
        (["optim.lr=-1"], "optim.lr=-1.0 is impossible"),
        (["optim.lr=nan"], "optim.lr=nan is impossible; it must be a finite number > 0"),
        (["optim.lr=inf"], "optim.lr=inf is impossible"),
        (["norm.eps=nan"], "norm.eps=nan is impossible"),
        (["norm.eps=inf"], "norm.eps=inf is impossible"),
        (["seed=100000000000000000000"], "seed=100000000000000000000 is too large"),
        (["optim.momentum=-1"], "optim.momentum=-1.0 is impossible"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 is impossible"),
        (["optim=adam", "optim.beta1=1.5"], "optim.beta1=1.5 is impossible; it must be in [0, 1)"),
        (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum"),
        (["model.width=100000"], "out of memory: resnet18 at model.width=100000 has"),
        (["trainer.precision=fp16"], "trainer.precision=fp16 needs CUDA"),
        (["trainer.channels_last=true", "model.width=4"], "trainer.channels_last=true on the CPU"),
        (["device=cuda"], "device=cuda but PyTorch sees no CUDA GPU"),
        (["dataset.root=/nonexistent"], "Fashion-MNIST files missing in /nonexistent"),
        (["batch_size=1000"], "batch_size=1000 exceeds the 192 training images"),
        (["data.val_size=256"], "data.val_size=256 leaves none of the 256 training images"),
        (["norm=batchnorm,none"], "Ambiguous value for argument 'norm=batchnorm,none'; to run"),
        (
            ["experiment=quickstart"],
            "experiment=quickstart is a grid over norm, batch_size; run it as a sweep: "
            "python -m bnstudy.run -m debug=fast experiment=quickstart paths.output_root=",
        ),
    ],
)
def test_bad_config_gives_one_line_and_writes_nothing(tmp_path, args, message):
    root = tmp_path / "out"
    assert_one_line_error(run_cli(*TINY, *args, f"paths.output_root={root}"), message)
    assert not root.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--cfg", "job", "-m"],
            "-m and --cfg cannot go together; without -m, --cfg job shows one cell's config",
        ),
        (["--info", "-m"], "-m and --info cannot go together"),
        (["--cfg", "foo"], "argument --cfg/-c: invalid choice: 'foo'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate; see --help"),
    ],
)
def test_hydra_usage_mistakes_give_our_one_line(tmp_path, flags, message):
    root = tmp_path / "out"
    result = run_cli(*flags, *TINY, "norm=batchnorm,none", f"paths.output_root={root}")
    assert_one_line_error(result, message)
    assert not root.exists()


def test_flags_after_the_overrides_are_explained(tmp_path):
    result = run_cli(*TINY, "--cfg", "job", f"paths.output_root={tmp_path}")
    assert_one_line_error(
        result, "give the flags (-m, --cfg, --info) before every key=value override"
    )


def test_a_sweep_with_a_bad_value_writes_nothing(tmp_path):
    root = tmp_path / "out"
    result = run_cli("-m", *TINY, "optim.lr=nan", f"paths.output_root={root}")
    assert_one_line_error(result, "optim.lr=nan is impossible")
    assert not any(root.rglob("summary.csv")) and not any(root.rglob(".hydra"))


def test_a_sweep_with_a_cell_that_cannot_run_is_refused_naming_the_cell(tmp_path):
    root = tmp_path / "out"
    result = run_cli(
        "-m", *TINY, "batch_size=16,1000", "norm=batchnorm", f"paths.output_root={root}"
    )
    assert_one_line_error(
        result,
        "1 of 2 cells of this sweep cannot run, e.g. batch_size=1000: batch_size=1000 exceeds the "
        "192 training images",
    )
    assert not root.exists()


def test_a_tuned_grid_with_one_cell_not_searched_is_refused_before_anything_trains(tmp_path):
    # A search of batchnorm only (the real records of a finished run): the tuned grid's affine
    # cell has no lr to read, and the sweep's first (batchnorm) cell must not train meanwhile.
    search = tmp_path / "search"
    sizes = ("dataset=fashion_mnist", "model.width=8", "trainer.epochs=2", "data.val_size=64")
    write_run(search, "batchnorm", 64, 0, [50.0, 60.0], val_accs=[40.0, 55.0], overrides=sizes)
    root = tmp_path / "tuned"
    result = run_cli(
        "-m", "experiment=paper_tuned", *TINY, "model=resnet18", "norm=batchnorm,affine",
        "batch_size=64", "seed=0", f"tuning.from={search}", f"paths.output_root={root}",
    )  # fmt: skip
    assert_one_line_error(result, "1 of 2 cells of this sweep cannot run, e.g. norm=affine:")
    assert f"tuning.from={search}: no lr search for " in result.stderr
    assert not root.exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_root_that_is_a_file_or_under_one_is_refused(tmp_path, multirun):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    sweep = ["-m"] if multirun else []
    for root, message in [(afile, "is a file"), (afile / "sub", f"lies under the file {afile}")]:
        result = run_cli(*sweep, *TINY, f"paths.output_root={root}")
        assert_one_line_error(result, f"paths.output_root={root} {message}")
    assert afile.read_text() == "keep me"


def test_an_empty_output_root_is_refused_not_the_filesystem_root(tmp_path):
    result = run_cli(*TINY, "paths.output_root=", cwd=tmp_path)
    assert_one_line_error(result, "paths.output_root is empty")
    assert not Path("/fashion_mnist").exists()


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A small tmpfs at `path` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_an_output_root_on_a_read_only_file_system_is_refused(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as root:
        result = run_cli(*TINY, f"paths.output_root={root / 'runs'}")
        assert_one_line_error(result, "is not writable (read-only file system")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip", "train-images-idx3-ubyte.gz: cannot read"),
        ("labels", "training labels of fashion_mnist lie outside 0..9"),
        ("header", "t10k-images-idx3-ubyte.gz: damaged idx header"),
    ],
)
def test_damaged_dataset_files_are_refused_before_a_run_folder_exists(tmp_path, damage, message):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=32)
    if damage == "flip":
        path = folder / "train-images-idx3-ubyte.gz"
        data = bytearray(path.read_bytes())
        for i in range(20, 60):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "labels":
        write_idx(folder / "train-labels-idx1-ubyte.gz", torch.full((64,), 10).numpy())
    else:
        write_idx(folder / "t10k-images-idx3-ubyte.gz", torch.zeros(32, 28, 28).numpy(), ndim=99)
    root = tmp_path / "out"
    args = [*TINY, f"dataset.root={folder}", "data.train_subset=64", "batch_size=32"]
    assert_one_line_error(run_cli(*args, f"paths.output_root={root}"), message)
    assert not root.exists()


def tiny_run_folder(root: Path, *overrides: str) -> tuple[Path, str]:
    """Where the CLI would put TINY + overrides under `root`, and its run id."""
    config = preflight.resolved(make_config(*TINY, *overrides))
    return root / records.run_path(config), records.run_id(config)


def test_hydra_run_dir_pointing_at_another_run_is_refused_before_hydra_writes(tmp_path):
    other = tmp_path / "other-run"
    (other / ".hydra").mkdir(parents=True)
    RunFolder(other).write_summary({"run_id": "0123abcd"}, Summary("completed"))
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (other / ".hydra" / name).write_text(f"the other run's {name}")
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    result = run_cli(*TINY, f"hydra.run.dir={other}", f"paths.output_root={tmp_path}")
    assert_one_line_error(result, f"{other} holds run '0123abcd'")
    after = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert after == before


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_malicious_checkpoint_is_refused_in_our_own_words(tmp_path):
    folder, run_id = tiny_run_folder(tmp_path)
    folder.mkdir(parents=True)
    RunFolder(folder).write_summary({"run_id": run_id}, Summary("interrupted"))
    with open(folder / "checkpoint.pt", "wb") as f:
        pickle.dump({"epoch": 1, "x": Payload()}, f)
    result = run_cli(*TINY, f"paths.output_root={tmp_path}")
    assert_one_line_error(result, "checkpoint.pt: refused: it holds objects other than")
    assert "weights_only" not in result.stdout + result.stderr and "pwned" not in result.stdout
    assert RunFolder(folder).read_summary()["status"] == "failed"
