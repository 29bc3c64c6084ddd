"""The record of the schema benchmark cases, shared by the function and the backlog producer."""

from pulsar.schema import Integer, Record, String


class Sample(Record):
    seq = Integer()
    pad = String()


def sample(i: int) -> Sample:
    """About 100 bytes as JSON, like the bytes cases' payloads."""
    return Sample(seq=i, pad="x" * 80)
