"""Engines of registered students that sample for the teacher: a later round of distillation (a job
or call naming `student`) draws its drafts, critiques and revisions from the previous round's
student instead of the teacher's model (docs/distillation.md, Rounds).

Each student runs from plain merged weights (its own, or base + adapter merged once into the model
store) in an engine of the teacher's own kind and settings, built on first use: vLLM-CPU's LoRA path
was several times slower than plain weights (docs/architecture.md §10), and the teacher's engine
keeps running without LoRA. At most `teacher.student_engines` are held at once (each one a model and
its KV cache); one that no batch uses is closed to make room, and a caller waits while all are busy.
A student engine that died is dropped and built afresh by its next user; it never counts as the
teacher's own engine dying.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.orm import Session, sessionmaker

from shared.engines.base import EngineClosed, engine_dead_reason
from shared.engines import Engine, create_engine
from shared.errors import DscError, EngineError
from shared.sampling_run import student_model_dir
from shared.settings import Settings

log = logging.getLogger(__name__)


class StudentEngines:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, stopping: threading.Event) -> None:
        self._settings, self._sessions, self._stopping = settings, sessions, stopping
        self._limit = settings.teacher.student_engines
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # least recently used first
        self._users: dict[str, int] = {}
        self._building: set[str] = set()
        self._changed = threading.Condition()

    @contextmanager
    def use(self, student_id: str) -> Iterator[Engine]:
        """The student's engine for the duration of the block (built or made room for first)."""
        engine = self._acquire(student_id)
        try:
            yield engine
        finally:
            self._release(student_id)

    def dead_reason(self, student_id: str) -> str | None:
        """Why the student's engine cannot generate any more (None: alive or not held); a dead one is dropped."""
        with self._changed:
            engine = self._engines.get(student_id)
        reason = engine_dead_reason(engine)
        if reason is not None:
            self._drop(student_id, engine)
        return reason

    def held(self) -> list[str]:
        """Ids of the students whose engines are held now, least recently used first."""
        with self._changed:
            return list(self._engines)

    def close(self) -> None:
        with self._changed:
            engines, self._engines = list(self._engines.values()), OrderedDict()
            self._changed.notify_all()
        for engine in engines:
            _close(engine)

    def _acquire(self, student_id: str) -> Engine:
        with self._changed:
            while True:
                if self._stopping.is_set():
                    raise EngineClosed()
                if student_id in self._engines and engine_dead_reason(self._engines[student_id]) is None:
                    self._engines.move_to_end(student_id)
                    self._users[student_id] = self._users.get(student_id, 0) + 1
                    return self._engines[student_id]
                if student_id not in self._building and self._make_room(student_id):
                    self._building.add(student_id)
                    break
                self._changed.wait(1.0)
        try:
            engine = self._build(student_id)
        except BaseException:
            with self._changed:
                self._building.discard(student_id)
                self._changed.notify_all()
            raise
        with self._changed:
            self._building.discard(student_id)
            self._changed.notify_all()
            if not self._stopping.is_set():
                self._engines[student_id] = engine
                self._users[student_id] = self._users.get(student_id, 0) + 1
                return engine
        _close(engine)  # built while the teacher stopped: close() has run already
        raise EngineClosed()

    def _make_room(self, student_id: str) -> bool:
        """Under the lock: close idle engines (a dead one of this student too) until one more fits; False: all busy."""
        stale = self._engines.pop(student_id, None)  # present here only when dead
        closing: list[Engine] = [] if stale is None else [stale]
        for held_id in list(self._engines):
            if len(self._engines) + len(self._building) < self._limit:
                break
            if not self._users.get(held_id):
                closing.append(self._engines.pop(held_id))
        for engine in closing:  # idle ones: nothing in flight to end
            _close(engine)
        return len(self._engines) + len(self._building) < self._limit

    def _build(self, student_id: str) -> Engine:
        with self._sessions() as session:
            try:
                weights = student_model_dir(session, student_id, self._settings.resolved_model_store)
            except (OSError, ValueError) as error:  # weights gone or unreadable: say which student, not a 500
                raise EngineError(f"the weights of student {student_id} could not be prepared: {error}") from error
        log.info("starting an engine for student %s (%s) to sample from", student_id, weights)
        try:
            return create_engine(self._settings, str(weights))
        except DscError:
            raise
        except Exception as error:
            raise EngineError(f"an engine for student {student_id} could not start: {type(error).__name__}: {error}") from error

    def _release(self, student_id: str) -> None:
        with self._changed:
            self._users[student_id] -= 1
            self._changed.notify_all()

    def _drop(self, student_id: str, engine: Engine | None) -> None:
        with self._changed:
            if engine is not None and self._engines.get(student_id) is engine:
                del self._engines[student_id]
                self._changed.notify_all()
        if engine is not None:
            _close(engine)


def _close(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:
        log.exception("closing a student engine failed")
