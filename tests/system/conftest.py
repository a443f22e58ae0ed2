"""Fixtures shared by the shared-tier system tests: one moto S3 server per
test module, with the tier's bucket made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.s3 import MotoS3
from tests.system.test_shared_tier import BUCKET


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as m:
        m.boto().create_bucket(Bucket=BUCKET)
        yield m
