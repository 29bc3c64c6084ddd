"""The same trivial function for Pulsar's own Python instance (its native form)."""


def process(input):
    return input
