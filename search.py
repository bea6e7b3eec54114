"""Stage 1: search how many LoRA experts each module gets and the rank of each expert.

    python search.py                                  # SmolLM2, chatterbot_topic, 10 steps
    python search.py search.order=second budget=params budget.value=2000000
    python search.py backbone=tiny_llama debug=fast   # seconds, for a smoke test
    python search.py hparams_search=search_lr         # Optuna over the learning rates

The last line printed is ``allocation: <path>``; pass that file to train.py.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    from guilomo.search.run import run_search
    from guilomo.utils.task import metric_value, read_scalars

    path = run_search(cfg)  # a task_wrapper: one W&B run per job, errors into the job log
    name = cfg.get("optimized_metric")
    return metric_value(read_scalars(path.parent), name) if name else None


if __name__ == "__main__":
    main()
