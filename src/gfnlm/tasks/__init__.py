"""Built-in tasks, by name."""

from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.infra.errors import GfnlmError
from gfnlm.posterior import PosteriorTask
from gfnlm.tasks.arithmetic.task import ArithmeticTask
from gfnlm.tasks.classification.task import ClassificationTask, SubjectivityTask
from gfnlm.tasks.continuation.task import ContinuationTask
from gfnlm.tasks.infilling.task import InfillingTask
from gfnlm.tasks.rng.task import RngTask

TASKS: dict[str, type[Task]] = {
    RngTask.name: RngTask, ContinuationTask.name: ContinuationTask, ArithmeticTask.name: ArithmeticTask,
    ClassificationTask.name: ClassificationTask, SubjectivityTask.name: SubjectivityTask,
    InfillingTask.name: InfillingTask, PosteriorTask.name: PosteriorTask}
ENTRY_POINTS = "gfnlm.tasks"  # other packages add tasks here: [project.entry-points."gfnlm.tasks"] name = "pkg:Task"


def installed_tasks() -> dict[str, object]:
    """The entry points of installed packages that add tasks, by name (loaded only when asked for)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS) if ep.name not in TASKS}


def task_names() -> list[str]:
    return list(TASKS) + sorted(installed_tasks())


def task_class(name: str) -> type[Task]:
    if name in TASKS:
        return TASKS[name]
    installed = installed_tasks()
    if name in installed:
        try:
            cls = installed[name].load()
        except Exception as exc:  # a third-party package that fails to import: name it
            raise GfnlmError(f"Task {name!r} comes from {installed[name].value!r}, which failed to load: "
                             f"{type(exc).__name__}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise GfnlmError(f"Task {name!r} ({installed[name].value}) is not a gfnlm Task subclass.")
        return cls
    import difflib

    hint = difflib.get_close_matches(name, task_names(), n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    raise GfnlmError(f"Unknown task {name!r}; available: {', '.join(sorted(task_names()))}.{extra}")


__all__ = ["TASKS", "EvalResult", "Task", "TaskPrompt", "task_class", "task_names"]
