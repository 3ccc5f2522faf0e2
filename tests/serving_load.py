"""Client load for the student service's hot-swap tests: worker threads sending greedy completions
back to back and recording every outcome (tests/student/test_hot_swap.py, test_merged_students.py)."""

from __future__ import annotations

import threading
import time

import httpx
import openai

PROMPT = [{"role": "user", "content": "Say hello."}]


class Load:
    """Worker threads sending greedy completions back to back, recording every outcome."""

    def __init__(self, url: str, key: str, workers: int = 3) -> None:
        self.url, self.key = url, key
        self.results: list[list[tuple[str, str]]] = [[] for _ in range(workers)]
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]

    def _work(self, index: int) -> None:
        with openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(model="student", messages=PROMPT, max_tokens=4, temperature=0)
                    response = raw.parse()
                    assert raw.headers["x-dsc-model"] == response.model
                    self.results[index].append((response.model, response.choices[0].message.content))
                except BaseException as exc:  # noqa: BLE001 - every failure counts
                    self.errors.append(exc)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def wait_for(self, predicate, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, "load did not make progress"
            time.sleep(0.2)

    def count(self, model: str) -> int:
        return sum(name == model for results in self.results for name, _ in results)


def served_ids(url: str, key: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]]
