"""Tasks: what a model is trained for. The trainer takes a ``Task``; next-byte prediction is
one, and a classification task plugs in the same way (see ``omnibyte.tasks.base``)."""
from omnibyte.tasks.base import TASKS, BatchSource, Task, load_task, register_task, task_from_dict
from omnibyte.tasks.next_byte import NextByteTask
from omnibyte.tasks.convert import ConvertTask  # importing it registers the "convert" task

__all__ = ["TASKS", "BatchSource", "ConvertTask", "NextByteTask", "Task", "load_task", "register_task", "task_from_dict"]
