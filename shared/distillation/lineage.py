"""Lineage of a distillation run: which round it is and which student, if any, sampled its pairs.

Round 1 distils pairs the teacher's own model sampled. A job that names a registered `student`
samples from that student instead, so a run over its pairs is the next round: its round is one more
than its parent's, the parent being the sampling student of its pairs (where pairs of several
students are mixed: the one of the latest round, then the one with the most pairs). Fixed at
submission from the pairs the run selects, stored on the run and copied to its student.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Job, Student

TEACHER = "teacher"  # the sampler of pairs no student sampled, in `sampled_by`


def run_lineage(session: Session, pair_jobs: Iterable[str]) -> dict[str, Any]:
    """{round, parent_id, pairs, jobs: {job id: pairs}, sampled_by: {student id or "teacher": pairs}} of
    a run whose selected pairs come from the jobs `pair_jobs` lists (one entry per pair)."""
    jobs = Counter(pair_jobs)
    samplers = dict(session.execute(select(Job.id, Job.params).where(Job.id.in_(list(jobs)))).all()) if jobs else {}
    sampled_by: Counter[str] = Counter()
    for job_id, pairs in jobs.items():
        sampled_by[(samplers.get(job_id) or {}).get("student") or TEACHER] += pairs
    students = {s.id: s for s in session.scalars(select(Student).where(Student.id.in_([k for k in sampled_by if k != TEACHER])))}
    parent = max(students.values(), key=lambda s: (s.round, sampled_by[s.id], s.id), default=None)
    return {
        "round": 1 if parent is None else parent.round + 1,
        "parent_id": None if parent is None else parent.id,
        "pairs": sum(jobs.values()),
        "jobs": dict(jobs.most_common()),
        "sampled_by": dict(sampled_by.most_common()),
    }
