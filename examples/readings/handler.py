"""readings: a typed function under a Pulsar schema.

The input and output are `pulsar.schema.Record` classes, so the topics get the records' JSON
schema with no flag, registered with the broker. Run it under AVRO instead with
`--custom-schema-inputs '{"readings": "AVRO"}' --output-schema-type AVRO`.
"""

from pulsar.schema import Double, Record, String


class Reading(Record):
    sensor = String()
    celsius = Double()


class Converted(Record):
    sensor = String()
    fahrenheit = Double()


def handler(reading: Reading) -> Converted:
    return Converted(sensor=reading.sensor, fahrenheit=reading.celsius * 9 / 5 + 32)
