"""The schema benchmark's trivial function: the input record, unchanged (JSON by annotation,
AVRO when the run configures it)."""

from sample import Sample


def handler(record: Sample) -> Sample:
    return record
