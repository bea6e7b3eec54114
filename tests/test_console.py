"""A quiet console: the two stages print no Lightning line a user cannot act on.

Lightning warns about a val loader without a ``validation_step`` (the search draws its
held-out batches itself) and says a module's callbacks "will override" the trainer's
when ``trainer.validate`` asks the fine-tune module for its guard a second time.
"""

import logging
import warnings

from compose import compose_cfg
from helpers import fast

from guilomo.finetune.run import run_train
from guilomo.search.run import run_search

NOISE = ("but have no `validation_step`", "will override existing callbacks")
FAST = fast()


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_search_then_train_print_no_noise(tmp_path):
    lightning = logging.getLogger("lightning.pytorch")
    handler, level = _Lines(), lightning.level
    lightning.addHandler(handler)
    lightning.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            search = [*FAST, "search.n_max=3", "search.r_max=2", "search.heatmap=false"]
            path = run_search(compose_cfg("search", search, tmp_path / "search"))
            train = [*FAST, "allocation=file", f"allocation.path={path}", "eval.limit=4"]
            run_train(compose_cfg("train", [*train, "eval.zero_shot=false"], tmp_path / "train"))
    finally:
        lightning.removeHandler(handler)
        lightning.setLevel(level)
    lines = handler.lines + [str(w.message) for w in caught]
    assert any("`Trainer.fit` stopped" in line for line in handler.lines)  # the handler hears
    assert [line for line in lines if any(n in line for n in NOISE)] == []
