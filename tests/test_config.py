import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bnstudy import records
from bnstudy.config.checks import validate
from bnstudy.errors import ConfigError
from bnstudy.study.models import RESNETS
from tests.helpers import make_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def test_defaults_compose_and_validate():
    cfg = make_config("device=cpu")
    validate(cfg)
    assert (cfg.model.name, cfg.norm.name, cfg.dataset.name) == ("resnet18", "batchnorm", "cifar10")
    assert (cfg.batch_size, cfg.model.width, cfg.optim.name) == (128, 64, "sgd")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("batch_size=0", "batch_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("model.width=0", "model.width"),
        ("data.train_subset=0", "data.train_subset"),
        ("data.test_subset=-3", "data.test_subset"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=-0.1", "optim.lr"),
        ("model.name=resnet19", "model.name"),
        ("norm.name=layernorm", "norm.name"),
        ("optim.schedule=linear", "optim.schedule"),
        ("device=cuda", "device=cuda"),
        ("+extra=1", "extra"),
        ("+model.depth=3", "model.depth"),
    ],
)
def test_impossible_values_are_refused_naming_the_key(override, key):
    cfg = make_config(override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_run_id_changes_with_what_affects_results_only():
    base = plain(make_config("device=cpu"))
    assert records.run_id(base) == records.run_id(plain(make_config("device=cpu")))
    for changed in [
        "optim.lr=0.05",
        "norm=affine",
        "seed=1",
        "model.width=32",
        "norm.eps=1e-3",
        "data.train_subset=100",
        "optim=adam",
    ]:
        assert records.run_id(plain(make_config("device=cpu", changed))) != records.run_id(base)
    for same in [
        "device=auto",
        "paths.output_root=/elsewhere",
        "dataset.root=/data",
        "trainer.progress=false",
    ]:
        assert records.run_id(plain(make_config(same))) == records.run_id(base)


def test_run_path_is_readable():
    cfg = plain(make_config("dataset=fashion_mnist", "norm=bnminus", "batch_size=32", "seed=3"))
    path = records.run_path(cfg)
    assert path == f"fashion_mnist/resnet18-w64-bnminus-bs32-seed3-{records.run_id(cfg)}"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_paper_experiment_is_the_full_grid_on_cifar10():
    cfg = hydra_config("experiment=paper")
    params = cfg.hydra.sweeper.params
    assert params.model.split(",") == list(RESNETS)
    assert sorted(params.norm.split(",")) == [
        "affine",
        "batchnorm",
        "bnminus",
        "none",
    ]  # the paper's
    sizes = [int(b) for b in params.batch_size.split(",")]
    assert min(sizes) <= 16 and max(sizes) >= 256
    assert cfg.dataset.name == "cifar10" and cfg.paths.output_root == "outputs/paper"


@pytest.mark.skipif(
    shutil.which("srun") is None, reason="submitit writes sbatch scripts only where SLURM is"
)
def test_slurm_presets_ask_for_a_gpu_or_none_and_for_requeue():
    from bnstudy.sweeps.slurm import submission_script

    gpu = hydra_config("hydra/launcher=slurm").hydra.launcher
    cpu = hydra_config("hydra/launcher=slurm_cpu").hydra.launcher
    for launcher in (gpu, cpu):
        assert launcher._target_.endswith("bnstudy_launcher.slurm_launcher.BnstudySlurmLauncher")
        assert launcher.max_num_timeout > 0 and launcher.wait is True
    params = {k: v for k, v in gpu.items() if k != "submitit_folder"}
    gpu_script = submission_script(params, "/tmp/sub/%j")
    cpu_script = submission_script({k: v for k, v in cpu.items() if k != "submitit_folder"}, "/x")
    # --requeue: on sites with JobRequeue=0 a time-limit requeue works only for such jobs.
    for script in (gpu_script, cpu_script):
        assert "#SBATCH --requeue\n" in script and "#SBATCH --signal=USR2@120\n" in script
    assert "#SBATCH --gpus-per-node=1\n" in gpu_script and "#SBATCH --mem=32GB\n" in gpu_script
    assert "gpus" not in cpu_script and "gres" not in cpu_script
    assert "#SBATCH --cpus-per-task=4\n" in cpu_script and "#SBATCH --mem=8GB\n" in cpu_script


def test_the_paper_grid_trains_on_all_training_images():
    assert hydra_config("experiment=paper").data.val_size == 0
    assert make_config().data.val_size == 5000
