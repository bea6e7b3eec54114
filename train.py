"""Fine-tune a LoRA-MoE from an allocation (searched or baseline) and evaluate it.

python train.py allocation=file allocation.path=<allocation.json>
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from guilomo.finetune.run import run_train

    run_train(cfg)


if __name__ == "__main__":
    main()
