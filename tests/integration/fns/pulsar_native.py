"""Pulsar's "native" Python function form: a module-level process(input)."""


def process(input):
    return input + "!"
