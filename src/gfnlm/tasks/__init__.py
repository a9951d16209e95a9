"""Built-in tasks, by name."""

from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.infra.errors import GfnlmError
from gfnlm.tasks.arithmetic.task import ArithmeticTask
from gfnlm.tasks.classification.task import ClassificationTask, SubjectivityTask
from gfnlm.tasks.continuation.task import ContinuationTask
from gfnlm.tasks.infilling.task import InfillingTask
from gfnlm.tasks.rng.task import RngTask

TASKS: dict[str, type[Task]] = {
    RngTask.name: RngTask, ContinuationTask.name: ContinuationTask, ArithmeticTask.name: ArithmeticTask,
    ClassificationTask.name: ClassificationTask, SubjectivityTask.name: SubjectivityTask,
    InfillingTask.name: InfillingTask}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        import difflib

        hint = difflib.get_close_matches(name, list(TASKS), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise GfnlmError(f"Unknown task {name!r}; available: {', '.join(sorted(TASKS))}.{extra}")
    return TASKS[name]


__all__ = ["TASKS", "EvalResult", "Task", "TaskPrompt", "task_class"]
