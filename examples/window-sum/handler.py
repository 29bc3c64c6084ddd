"""window-sum: a tumbling count window, summed: every 100 numbers in, their sum out.

pulsarfunc run examples/window-sum --inputs numbers --output sums --window-length-count 100
"""


def handler(window: list[int]) -> int:
    return sum(window)
