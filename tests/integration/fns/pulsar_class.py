"""A function written for Pulsar's own Python runtime, unchanged."""

from pulsar import Function


class ExclamationFunction(Function):
    def __init__(self):
        pass

    def process(self, input, context):
        suffix = context.get_user_config_value("suffix") or "!"
        context.get_logger().info(
            "processing %s from %s", input, context.get_current_message_topic_name()
        )
        return input + suffix
