"""The SLURM launcher config (hydra/launcher=slurm): composes for both entry points,
one task per GPU, and builds hydra-submitit-launcher's SLURM launcher (no job is
submitted); switching to another launcher leaves none of its keys behind."""

import pytest
from compose import CONF
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf


def _hydra(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    return cfg


@pytest.mark.parametrize("name", ["train", "search"])
def test_slurm_launcher_composes_one_task_per_gpu(name):
    cfg = _hydra(
        name,
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.timeout_min=60",
        ],
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 60)
    assert launcher.tasks_per_node == 4 and launcher.nodes == 1
    assert cfg.trainer.strategy == "ddp"
    params = OmegaConf.to_container(launcher, resolve=False)
    params.update(submitit_folder="/tmp/unused/%j", name="job")  # set by Hydra at run time
    built = instantiate(OmegaConf.create(params))
    assert built.params["partition"] == "gpu" and built.params["tasks_per_node"] == 4


def test_switching_launcher_leaves_no_slurm_keys():
    cfg = _hydra("train", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert "partition" not in cfg.hydra.launcher and cfg.hydra.launcher.n_jobs == 2
