"""The real Redis the tests use (127.0.0.1:6379 unless GPUX_TEST_REDIS says otherwise): a fresh
key prefix per test, its keys deleted after.  No Redis: the test fails under CI=true (CI starts
one) and is skipped elsewhere, with the reason."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("GPUX_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_prefix(tag: str, why: str = "") -> Iterator[str]:
    """Body of a fixture: yields a unique key prefix, deletes its keys afterwards."""
    try:
        r = redis.Redis.from_url(REDIS_URL)
        r.ping()
    except redis.RedisError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is needed at {REDIS_URL} under CI: {e}")
        pytest.skip(f"no Redis at {REDIS_URL} ({e}); start one (CI does){why}")
    prefix = f"gpuxtest-{tag}{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
        r.close()
