"""Who may end a step's wait now: a callback posted to its URL, or a child execution
reporting its end (the rules both stores apply, under their own write conditions), and
whether a child's end resumes its parent."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from service.callback_tokens import CallbackToken
from service.execution import (
    TERMINAL,
    Execution,
    ItemResult,
    ParentRef,
    StepResult,
    StepStatus,
    now,
)


class Answer(StrEnum):
    """What a callback posted to a step's URL meets."""

    ACCEPTED = "accepted"  # recorded; the execution resumes
    ANSWERED = "answered"  # that step was answered already: nothing changes
    GONE = "gone"  # its wait timed out, its run or the execution ended, or it is cancelled
    UNKNOWN = "unknown"  # no such execution or step, or the token's secret does not match


def callback_answer(
    execution: Execution, token: CallbackToken, cancel_requested: bool = False
) -> Answer:
    """Whether `token` may answer its step of `execution` now (see Answer)."""
    step = execution.steps.get(token.step)
    wait = step.wait if step is not None else None
    if step is None or wait is None or wait.kind != "callback":
        return Answer.UNKNOWN
    if not token.matches(wait.callback_sha256) or wait.run != token.run:
        return Answer.UNKNOWN
    if token.step in execution.callbacks or step.status == StepStatus.SUCCEEDED:
        return Answer.ANSWERED
    ended = execution.status in TERMINAL or cancel_requested or token.run != execution.run
    if ended or step.status != StepStatus.WAITING or now() >= wait.timeout_at:
        return Answer.GONE
    return Answer.ACCEPTED


def child_answer(
    execution: Execution, parent: ParentRef, child: str, cancel_requested: bool = False
) -> Answer:
    """Whether the child execution `child` may report its end to `execution`, its parent
    (the step or item of `parent`), now (see Answer): to the wait its step has now,
    whichever run started the child (a re-driven parent waits again for the children
    that had not succeeded)."""
    step = execution.steps.get(parent.step)
    wait = step.wait if step is not None else None
    if step is None or wait is None or wait.kind != "flow":
        return Answer.UNKNOWN
    record: StepResult | ItemResult | None = step
    if parent.index is not None:
        items = step.items or []
        record = items[parent.index] if parent.index < len(items) else None
    if record is None or record.child != child:
        return Answer.UNKNOWN
    ended = execution.status in TERMINAL or cancel_requested or wait.run != execution.run
    if ended or step.status != StepStatus.WAITING:
        return Answer.GONE
    if parent.answer_key in execution.callbacks:
        return Answer.ANSWERED
    if isinstance(record, ItemResult) and record.status != StepStatus.RUNNING:
        return Answer.GONE  # its item timed out
    return Answer.ACCEPTED


def child_resumes(execution: Execution, parent: ParentRef, ends: int) -> bool:
    """Whether a child's end just recorded, with it `ends` recorded for its step's wait,
    resumes the parent: a single child's does; of a fan-out's, every end while an item
    waits for a child (a slot is free for it), else the one that makes the ends as many
    as the children the wait started. Where several ends count the same at once (on
    Firestore), the store lets one of them resume it."""
    step = execution.steps[parent.step]
    if parent.index is None or step.wait is None:
        return True
    items = step.items or []
    if any(item.status == StepStatus.RUNNING and item.child is None for item in items):
        return True
    return ends >= step.wait.children


# Whether an answer may be recorded now: given the execution and whether a cancel was asked.
AnswerRule = Callable[[Execution, bool], Answer]


def callback_rule(token: CallbackToken) -> AnswerRule:
    return lambda execution, cancel_requested: callback_answer(execution, token, cancel_requested)


def child_rule(parent: ParentRef, child: str) -> AnswerRule:
    return lambda execution, cancel_requested: child_answer(
        execution, parent, child, cancel_requested
    )
