"""Data layer: examples, prompt templates, task loaders and the Lightning datamodule.

from guilomo.data import TaskDataModule, load_task, TASKS
dm = TaskDataModule("chatterbot_topic", tokenizer=tok); dm.setup()
"""

from guilomo.data.datamodule import TaskDataModule
from guilomo.data.example import Example
from guilomo.data.tasks import TASKS, TaskSpec, get_task, load_task
from guilomo.data.templates import TEMPLATES, PromptTemplate, get_template

__all__ = [
    "Example",
    "PromptTemplate",
    "TASKS",
    "TEMPLATES",
    "TaskDataModule",
    "TaskSpec",
    "get_task",
    "get_template",
    "load_task",
]
