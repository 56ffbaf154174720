"""A followup run's context: what the previous run of its workspace left behind.

The context names the previous run and says how it ended, quotes its question when it
stopped with one (`blocked`), and gives the end of its output. The agent's manifest
`context` decides how it travels: `prompt` puts it before the prompt, between
`<fleetbus-context>` lines, then `Follow-up:` (or `Answer to its question:`) and the prompt;
`file` writes it to a file named by `$FLEETBUS_CONTEXT_FILE`; `none` sends nothing but
`$FLEETBUS_PREVIOUS_RUN_ID`.

Text only: the caller reads the previous run and delivers the context (launch.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import DispatchResult

OPEN = "<fleetbus-context>"
CLOSE = "</fleetbus-context>"
TAIL_BYTES = 4000  # of the previous run's output
CUT = "… (cut)"
NO_EARLIER_RUN = "no earlier run in this workspace: started without context"
NO_EARLIER_RUN_YET = "no earlier run in this workspace: it will start without context"


@dataclass(frozen=True)
class Previous:
    """The run a followup continues, as its context describes it."""

    run_id: str
    status: str
    exit_code: int | None
    question: str | None  # when it ended blocked
    output_tail: str


def text(previous: Previous, limit: int | None = None) -> str:
    """The context of a followup of `previous`, within `limit` bytes (UTF-8) when given:
    the question and the output are cut first, the line naming the run never."""
    if previous.status in ("running", "queued"):
        ended = f"it is still {previous.status}"
    else:
        code = f", exit {previous.exit_code}" if previous.exit_code is not None else ""
        ended = f"it ended {previous.status}{code}"
    head = f"This continues run {previous.run_id} in this workspace ({ended})."
    question = previous.question
    tail = previous.output_tail.replace("\x00", "").strip()
    if limit is not None:
        fixed = len(head.encode()) + 120  # the labels and line breaks
        room = max(0, limit - fixed)
        size_q = len(question.encode()) if question is not None else 0
        size_t = len(tail.encode())
        if size_q + size_t > room:
            keep_t = min(size_t, room // 4)
            keep_q = room - keep_t
            if question is not None and size_q > keep_q:
                question = _head(question, keep_q)
            if size_t > keep_t:
                tail = _tail(tail, keep_t)
    parts = [head]
    if question is not None:
        parts.append(f"Its question:\n{question or '(empty)'}")
    parts.append(f"The end of its output:\n{tail or '(no output)'}")
    # the agent wrote the question and the output: they must not close the block early
    return "\n\n".join(parts).replace(CLOSE, "</fleetbus-context >")


def prefixed(context: str, prompt: str, *, answers: bool) -> str:
    """`prompt` after the context block; `answers` when it answers the previous run's question."""
    heading = "Answer to its question:" if answers else "Follow-up:"
    return f"{OPEN}\n{context}\n{CLOSE}\n\n{heading}\n{prompt}"


def _head(value: str, size: int) -> str:
    """The start of `value` in at most `size` bytes, marked as cut."""
    room = size - len(CUT.encode()) - 1
    if room <= 0:
        return CUT
    return value.encode()[:room].decode(errors="ignore").rstrip() + "\n" + CUT


def _tail(value: str, size: int) -> str:
    """The end of `value` in at most `size` bytes, marked as cut."""
    room = size - len(CUT.encode()) - 1
    if room <= 0:
        return CUT
    return CUT + "\n" + value.encode()[-room:].decode(errors="ignore").lstrip()


def note_no_context(
    result: DispatchResult, mode: str, previous: str | None, ahead: int
) -> DispatchResult:
    """`result`, saying so when a followup has no earlier run to continue (`ahead`: runs
    queued before it in its workspace, which may yet give it one)."""
    if mode != "followup" or previous is not None or ahead:
        return result
    if result.status == "running":
        result.reason = NO_EARLIER_RUN
    elif result.status == "queued":
        result.reason = f"{result.reason}; {NO_EARLIER_RUN_YET}"
    return result
