"""counter: managed state. Counts each word seen, and says how often it has been seen.

    pulsarfunc run examples/counter --inputs words --output counts \
        --state-storage-service-url bk://localhost:4181
"""

from pulsarfunc import Context


def handler(ctx: Context, text: str) -> str:
    seen = []
    for word in text.split():
        ctx.incr_counter(word, 1)
        seen.append(f"{word}={ctx.get_counter(word)}")
    ctx.put_state("last-line", text)
    return " ".join(seen)
