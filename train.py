"""Fine-tune a LoRA-MoE from an allocation (searched or baseline) and evaluate it.

python train.py allocation=file allocation.path=<allocation.json>
python train.py hparams_search=train_lr        # Optuna: main() returns optimized_metric
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from guilomo.finetune.run import run_train
    from guilomo.utils.task import metric_value

    result = run_train(cfg)  # a task_wrapper: one W&B run per job, errors into the job log
    return metric_value(result["scalars"], cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
