"""The Bus: dispatches actions, answers queries, broadcasts messages and runs jobs.

Pluggy collects what plugins declare (see `plugins.py`); the bus holds the result in
plain dicts and dispatches on its own, so an action call costs a dict lookup, a pydantic
validation and an await.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
from pydantic import BaseModel, ValidationError

from .actions import ActionSpec
from .context import Context, current_context, new_id
from .errors import (
    ActionFailed,
    ActionNotFound,
    ActionTimeout,
    BusError,
    InvalidInput,
    StartupError,
)
from .messages import (
    DEFAULT_BUFFER,
    Envelope,
    JobCompleted,
    JobProgress,
    JobStarted,
    Message,
    Subscription,
)
from .queries import Query, QueryHandler

log = logging.getLogger("fleetbus.bus")

MAX_JOBS = 1000
HISTORY = 1000

MessageHandler = Callable[..., Any]


@dataclass
class Job:
    """A background action: its id, status and, once done, its result or error."""

    job_id: str
    action: str
    status: str = "running"  # running | completed | failed
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    progress: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    done: anyio.Event = field(default_factory=anyio.Event, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "action": self.action,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
        }


def dump_result(result: Any) -> Any:
    """A handler's result as JSON-ready data."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


class Bus:
    """Actions, queries, messages and jobs for one hub.

    Use as an async context manager: it owns the task group in which subscriber
    handlers and background jobs run, and cancels them on exit.
    """

    def __init__(self) -> None:
        self._actions: dict[str, ActionSpec] = {}
        self._queries: dict[str, list[QueryHandler]] = {}
        self._query_types: dict[str, type[Query]] = {}
        self._subs: list[Subscription] = []
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._history: deque[Envelope] = deque(maxlen=HISTORY)
        self._seq = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._thread: int | None = None
        self.context = Context(caller="hub")
        self.inflight = 0
        self._listeners: list[Callable[[], object]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._thread = threading.get_ident()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        for sub in list(self._subs):
            sub.close()
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(et, e, tb)
        finally:
            self._tg = None

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the bus is not running: use `async with Bus() as bus`")
        return self._tg

    # -- registration ------------------------------------------------------------------------
    def add_action(self, spec: ActionSpec) -> None:
        """Register an action; a name taken by another plugin is a startup error naming both."""
        old = self._actions.get(spec.name)
        if old is not None:
            raise StartupError(
                f"action {spec.name!r} is registered twice: by plugin {old.plugin!r} and by "
                f"plugin {spec.plugin!r}; disable one with FLEETBUS_DISABLE_PLUGINS"
            )
        self._actions[spec.name] = spec
        self._changed()

    def add_query_handler(self, handler: QueryHandler) -> None:
        name = handler.query_type.query_name()
        known = self._query_types.setdefault(name, handler.query_type)
        if known is not handler.query_type:
            raise StartupError(
                f"query name {name!r} is used by two classes ({known.__module__} and "
                f"{handler.query_type.__module__}); set a distinct `query_id` on one"
            )
        self._queries.setdefault(name, []).append(handler)

    def on_actions_changed(self, listener: Callable[[], object]) -> Callable[[], None]:
        """Call `listener` whenever the set of actions changes; returns its undo."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    # -- introspection -----------------------------------------------------------------------
    def action(self, name: str) -> ActionSpec:
        try:
            return self._actions[name]
        except KeyError:
            raise ActionNotFound(name, self._actions) from None

    @property
    def actions(self) -> Mapping[str, ActionSpec]:
        return self._actions

    def list_actions(self, *, exposed_only: bool = False) -> list[dict[str, Any]]:
        """Every action with its flags and JSON Schemas, sorted by name."""
        return [
            spec.info()
            for name, spec in sorted(self._actions.items())
            if spec.exposed or not exposed_only
        ]

    def query_types(self) -> Mapping[str, type[Query]]:
        return self._query_types

    # -- actions -----------------------------------------------------------------------------
    def validate(self, spec: ActionSpec, payload: Any) -> BaseModel:
        """Turn the caller's payload into the action's input model or raise InvalidInput."""
        if type(payload) is dict and (spec.allows_extra or spec.field_names.issuperset(payload)):
            try:  # the hot path: a plain dict with known keys
                return (spec.validate_dict or spec.validator.validate_python)(payload)
            except ValidationError as e:
                raise InvalidInput.from_validation(spec.name, e) from None
        model = spec.input_model
        if isinstance(payload, model):
            return payload
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise InvalidInput.from_errors(
                spec.name,
                [
                    {
                        "field": "(input)",
                        "message": f"expected a JSON object, got {type(payload).__name__}",
                    }
                ],
            )
        if not spec.allows_extra:
            unknown = payload.keys() - spec.field_names
            if unknown:
                expected = ", ".join(sorted(spec.field_names)) or "no fields"
                raise InvalidInput.from_errors(
                    spec.name,
                    [
                        {"field": str(k), "message": f"unknown field (expected: {expected})"}
                        for k in sorted(unknown, key=str)
                    ],
                )
        try:
            return model.model_validate(payload)
        except ValidationError as e:
            raise InvalidInput.from_validation(spec.name, e) from None

    async def perform(
        self,
        name: str,
        payload: Any = None,
        *,
        context: Context | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Validate `payload`, run the action's handler and return its result.

        Raises `ActionNotFound`, `InvalidInput`, `ActionTimeout`, a `BusError` the handler
        raised on purpose, or `ActionFailed` chained to any other exception.
        """
        spec = self._actions.get(name)
        if spec is None:
            raise ActionNotFound(name, self._actions)
        validate = spec.validate_dict
        try:
            # the common case of `validate` (a plain dict with known keys) without the call
            if (
                validate is not None
                and type(payload) is dict
                and (spec.allows_extra or spec.field_names.issuperset(payload))
            ):
                data = validate(payload)
            else:
                data = self.validate(spec, payload)
        except ValidationError as e:
            err = InvalidInput.from_validation(spec.name, e)
            err.data["action"] = spec.name
            raise err from None
        except InvalidInput as e:
            e.data.setdefault("action", spec.name)
            raise
        # The call is made here, not in a helper coroutine (jobs come through here too, with
        # their validated model): each coroutine layer costs a few percent of a trivial call.
        if context is None:
            parent = current_context.get()
            context = Context() if parent is None else parent.child()
        token = current_context.set(context)
        self.inflight += 1
        try:
            limit = timeout if timeout is not None else spec.timeout
            if limit is None:
                if not spec.is_async:
                    result = await self._call(spec, data, context)
                elif spec.arity == 1:
                    result = await spec.handler(data)
                elif spec.arity == 2:
                    result = await spec.handler(data, context)
                else:
                    result = await spec.handler()
            else:
                try:
                    with anyio.fail_after(limit):
                        result = await self._call(spec, data, context)
                except TimeoutError:
                    raise ActionTimeout(
                        f"{spec.name} did not finish within {limit:g}s", data={"action": spec.name}
                    ) from None
        except InvalidInput as e:
            raise _named(spec.name, e) from e.__cause__
        except BusError:
            raise
        except Exception as e:
            log.error("action %s failed", spec.name, exc_info=True)
            raise ActionFailed(
                f"{spec.name} failed: {type(e).__name__}: {e}", data={"action": spec.name}
            ) from e
        finally:
            self.inflight -= 1
            current_context.reset(token)
        model = spec.output_model
        if model is None or type(result) is model:  # the common cases, without a call
            return result
        return self._check_output(spec, result)

    @staticmethod
    async def _call(spec: ActionSpec, data: BaseModel, context: Context) -> Any:
        args = (data, context)[: spec.arity]
        if spec.is_async:
            return await spec.handler(*args)
        return await anyio.to_thread.run_sync(functools.partial(spec.handler, *args))

    @staticmethod
    def _check_output(spec: ActionSpec, result: Any) -> Any:
        model = spec.output_model
        if model is None or isinstance(result, model):
            return result
        try:
            return model.model_validate(result)
        except ValidationError as e:
            raise ActionFailed(
                f"{spec.name} returned output that does not match {model.__name__}: "
                f"{InvalidInput.from_validation(spec.name, e).message}",
                data={"action": spec.name},
            ) from e

    # -- jobs --------------------------------------------------------------------------------
    def start_job(self, name: str, payload: Any = None, *, context: Context | None = None) -> str:
        """Start an action in the background and return its job id at once.

        Bad input is refused here, before the job exists. Progress and completion arrive as
        `bus.job_started`, `bus.job_progress` and `bus.job_completed` messages.
        """
        spec = self.action(name)
        data = self.validate(spec, payload)
        job = Job(job_id=new_id(), action=name)
        base = context or (current_context.get() or Context()).child()

        def report(progress: float | None, message: str) -> None:
            job.progress = progress
            self.publish(
                JobProgress(job_id=job.job_id, action=name, progress=progress, message=message), ctx
            )

        ctx = base.with_job(job.job_id, report)
        self._jobs[job.job_id] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.popitem(last=False)
        self.publish(JobStarted(job_id=job.job_id, action=name), ctx)
        self.task_group.start_soon(self._run_job, spec, data, ctx, job, name=f"job {name}")
        return job.job_id

    async def _run_job(self, spec: ActionSpec, data: BaseModel, ctx: Context, job: Job) -> None:
        try:
            result = await self.perform(spec.name, data, context=ctx)
        except BusError as e:
            job.status, job.error = "failed", e.to_dict()
        except anyio.get_cancelled_exc_class():
            job.status, job.error = "failed", {"type": "Cancelled", "message": "the hub stopped"}
            job.ended_at = time.time()
            job.done.set()
            raise
        else:
            job.status, job.result = "completed", dump_result(result)
        job.ended_at = time.time()
        job.done.set()
        self.publish(
            JobCompleted(
                job_id=job.job_id,
                action=spec.name,
                ok=job.status == "completed",
                result=job.result,
                error=job.error,
            ),
            ctx,
        )

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    @property
    def jobs_running(self) -> int:
        """How many background jobs have not ended."""
        return sum(1 for job in self._jobs.values() if job.status == "running")

    # -- queries -----------------------------------------------------------------------------
    async def query(self, q: Query, *, context: Context | None = None) -> Any:
        """The first answer that is not None, in plugin registration order; None if none."""
        for handler in self._queries.get(type(q).query_name(), ()):
            answer = await self._ask(handler, q, context)
            if answer is not None:
                return answer
        return None

    async def query_all(self, q: Query, *, context: Context | None = None) -> list[Any]:
        """Every handler's answer that is not None, in plugin registration order."""
        answers = []
        for handler in self._queries.get(type(q).query_name(), ()):
            answer = await self._ask(handler, q, context)
            if answer is not None:
                answers.append(answer)
        return answers

    async def _ask(self, handler: QueryHandler, q: Query, context: Context | None) -> Any:
        ctx = context or current_context.get() or Context()
        args = (q, ctx) if handler.wants_context else (q,)
        try:
            if handler.is_async:
                return await handler.handler(*args)
            return await anyio.to_thread.run_sync(functools.partial(handler.handler, *args))
        except BusError:
            raise
        except Exception as e:
            log.error("query %s failed in plugin %s", q.query_name(), handler.plugin, exc_info=True)
            raise ActionFailed(
                f"query {q.query_name()} failed in plugin {handler.plugin!r}: {type(e).__name__}: {e}"
            ) from e

    # -- messages ----------------------------------------------------------------------------
    def publish(self, message: Message, context: Context | None = None) -> Envelope | None:
        """Deliver `message` to every matching subscriber without waiting.

        Safe from a worker thread started by the bus (it hops to the event loop).
        """
        if self._thread is not None and threading.get_ident() != self._thread:
            return anyio.from_thread.run_sync(self.publish, message, context)
        self._seq += 1
        envelope = Envelope(
            self._seq,
            message.topic,
            message,
            context or current_context.get() or self.context,
            time.time(),
        )
        self._history.append(envelope)
        subs = self._routes.get(message.topic)
        if subs is None:
            subs = self._routes[message.topic] = tuple(
                s for s in self._subs if s.matches(message.topic)
            )
        for sub in subs:
            sub.offer(envelope)
        return envelope

    def wants(self, topic: str) -> bool:
        """Whether any subscription would receive a message of `topic` (so a plugin can
        skip making messages nobody reads)."""
        return any(s.matches(topic) for s in self._subs)

    def history(self, since: int = 0) -> Iterator[Envelope]:
        """Recent envelopes (the last 1,000) with a sequence number above `since`."""
        return (e for e in self._history if e.seq > since)

    @property
    def seq(self) -> int:
        return self._seq

    def open_subscription(
        self,
        topics: Iterable[str] | None = None,
        *,
        name: str = "subscriber",
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """A new subscription the caller iterates; close it with `close_subscription`."""
        sub = Subscription(name, topics, buffer)
        self._subs.append(sub)
        self._routes.clear()
        return sub

    def close_subscription(self, sub: Subscription) -> None:
        sub.close()
        if sub in self._subs:
            self._subs.remove(sub)
            self._routes.clear()

    @contextmanager
    def subscription(
        self,
        topics: Iterable[str] | None = None,
        *,
        name: str = "subscriber",
        buffer: int = DEFAULT_BUFFER,
    ) -> Iterator[Subscription]:
        """`with bus.subscription(["runner.*"]) as sub: async for envelope in sub: ...`"""
        sub = self.open_subscription(topics, name=name, buffer=buffer)
        try:
            yield sub
        finally:
            self.close_subscription(sub)

    def subscribe(
        self,
        handler: MessageHandler,
        topics: Iterable[str] | None = None,
        *,
        name: str | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> Callable[[], None]:
        """Call `handler(message)` (or `handler(message, context)`) for each matching message.

        The handler runs in its own task with its own buffer (a sync one in a worker thread,
        so it never blocks the event loop); its exceptions are logged and counted, never
        raised into the publisher. Returns the function that unsubscribes.
        """
        func = inspect.unwrap(handler)
        is_async = inspect.iscoroutinefunction(func)
        wants_context = len(inspect.signature(func).parameters) >= 2
        sub = self.open_subscription(
            topics, name=name or str(getattr(func, "__qualname__", "handler")), buffer=buffer
        )

        async def consume() -> None:
            async for envelope in sub:
                args = (
                    (envelope.message, envelope.context) if wants_context else (envelope.message,)
                )
                try:
                    if is_async:
                        await handler(*args)
                    else:  # like a sync action: in a worker thread, off the event loop
                        await anyio.to_thread.run_sync(functools.partial(handler, *args))
                except Exception:
                    sub.failures += 1
                    log.error("subscriber %s failed on %s", sub.name, envelope.topic, exc_info=True)

        self.task_group.start_soon(consume, name=f"subscriber {sub.name}")
        return functools.partial(self.close_subscription, sub)

    def subscriber_stats(self) -> list[dict[str, Any]]:
        return [s.stats() for s in self._subs]


def _named(action: str, e: InvalidInput) -> InvalidInput:
    """The caller's error named after the action the caller called. A handler may raise it
    from a helper shared by several actions that cannot know which one it serves; one from
    a nested `perform` already names its own action (`data["action"]`) and is kept."""
    if "action" in e.data:
        return e
    named = InvalidInput.from_errors(action, e.errors) if e.errors else e
    named.data["action"] = action
    return named
