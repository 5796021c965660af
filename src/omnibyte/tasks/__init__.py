"""Tasks: what a model is trained for. The trainer takes a ``Task``; next-byte prediction is
one, classification of whole files (``classify``) and conversion of paired records
(``convert``, and ``answer``: questions about images) others (see ``omnibyte.tasks.base``). Every
task module is imported here, so ``TASKS`` lists them all."""
from omnibyte.tasks.base import TASKS, BatchSource, Task, load_task, load_task_of, register_task, task_from_dict
from omnibyte.tasks.answer import AnswerTask
from omnibyte.tasks.classify import ClassifyTask
from omnibyte.tasks.convert import ConvertTask
from omnibyte.tasks.next_byte import NextByteTask

__all__ = ["TASKS", "AnswerTask", "BatchSource", "ClassifyTask", "ConvertTask", "NextByteTask", "Task", "load_task",
           "load_task_of", "register_task", "task_from_dict"]
