"""Two runs of one student name that finish together both register, as versions 1 and 2: the
second waits for the first's commit instead of colliding on (name, version) after all its
training. Real Postgres (SQLite serialises writers on its own), two transactions in two threads."""

from __future__ import annotations

import threading
import time

from shared.db.models import DistillationRun
from shared.db.session import make_engine, session_factory, upgrade
from shared.distillation.registry import register_student


def test_two_runs_of_one_name_finishing_together_take_turns_for_a_version(postgres_url):
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        session.add_all([DistillationRun(id="run-1", task_name="sentiment", status="running"),
                         DistillationRun(id="run-2", task_name="sentiment", status="running")])

    def register(run_id: str, session) -> int:
        student = register_student(session, session.get(DistillationRun, run_id), name="twin-student", base_model="base",
                                   adapter_dir=None, merged_dir=None, metrics={})
        return student.version

    versions: dict[str, int] = {}
    errors: list[BaseException] = []
    first = sessions()
    first.begin()
    versions["run-1"] = register("run-1", first)  # flushed, not committed: its transaction holds on

    def second() -> None:
        try:
            with sessions() as session, session.begin():
                versions["run-2"] = register("run-2", session)
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)  # the second registration is waiting now (on the name's lock, or on the unique index)
    first.commit()
    first.close()
    thread.join(30)
    engine.dispose()
    assert not errors, errors
    assert versions == {"run-1": 1, "run-2": 2}
