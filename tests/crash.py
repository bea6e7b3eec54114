"""A callback that fails a training run on purpose, for tests of failure handling.

Added from the command line: ``+callbacks.crash._target_=crash.CrashAt +callbacks.crash.step=N``
(the tests folder is on the subprocess's ``PYTHONPATH``).
"""

import lightning as L


class CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
