"""Small pieces shared by the client tests."""

from __future__ import annotations

from ecephys_dl.http import RetryPolicy

# Retries that finish in milliseconds.
FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, jitter=0.5)


class Sleeps(list[float]):
    """An injected sleep: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
