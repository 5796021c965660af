"""Tasks: what a model is trained for. The trainer takes a ``Task``; next-byte prediction is
one, and a classification task plugs in the same way (see ``omnibyte.tasks.base``)."""
from omnibyte.tasks.base import TASKS, BatchSource, Task, load_task, register_task, task_from_dict
from omnibyte.tasks.next_byte import NextByteTask

__all__ = ["TASKS", "BatchSource", "NextByteTask", "Task", "load_task", "register_task", "task_from_dict"]
