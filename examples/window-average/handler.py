"""window-average: a sliding time window: every second, the average of the last 10 seconds.

    pulsarfunc run examples/window-average --inputs readings --output averages \
        --window-length-duration-ms 10000 --sliding-interval-duration-ms 1000

With --use-event-time, the window goes by each message's event time instead of its arrival,
with watermarks (--max-lag-ms, --watermark-emit-interval-ms) and --late-data-topic.
"""

from pulsarfunc import WindowRecord


def handler(window: list[WindowRecord[float]]) -> dict[str, float]:
    values = [record.value for record in window]
    return {
        "average": sum(values) / len(values),
        "count": len(values),
        "first": min(record.timestamp for record in window),
        "last": max(record.timestamp for record in window),
    }
