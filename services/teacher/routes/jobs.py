"""Placeholder router; filled in by its issue."""

from fastapi import APIRouter

router = APIRouter()


def start_workers(state) -> list:
    return []


def stop_workers(workers: list) -> None:
    pass
