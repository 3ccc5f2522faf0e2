"""The distillation control plane: run and evaluation configs, the queue side of runs and
evaluations (submit, list, show, cancel), the pair selection, and the student registry with its
promotion. The teacher's admin API, the trainer worker and the student's registry poll all use it;
they meet in the database, never by importing one another.

Nothing here loads a tokenizer or a model: checks that need the student's model run in the trainer
(services/trainer/preflight.py), and a run that fails them fails with the reason as its error.
"""
