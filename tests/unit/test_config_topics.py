"""Topic names: Pulsar's short forms become full names; malformed names are refused with why."""

from __future__ import annotations

import pytest

from pulsarfunc.runtime.resolve import normalize_topic

NAMES = [
    ("my-topic", "persistent://public/default/my-topic"),
    ("  my-topic ", "persistent://public/default/my-topic"),
    ("acme/payments/orders", "persistent://acme/payments/orders"),
    ("persistent://acme/payments/orders", "persistent://acme/payments/orders"),
    ("non-persistent://acme/payments/ticks", "non-persistent://acme/payments/ticks"),
    ("orders-partition-3", "persistent://public/default/orders-partition-3"),
    ("t.e_n-a=n:t/ns/x", "persistent://t.e_n-a=n:t/ns/x"),
]


@pytest.mark.parametrize(("name", "full"), NAMES)
def test_short_names_become_full_names(name: str, full: str) -> None:
    assert normalize_topic(name) == full
    assert normalize_topic(full) == full  # idempotent


BAD = [
    ("", "expected topic"),
    ("tenant/topic", "expected topic, tenant/namespace/topic"),
    ("a/b/c/d", "expected topic"),
    ("persistent://a/b", "expected topic"),
    ("persistent://a/b/", "expected topic"),
    ("kafka://a/b/c", "unknown domain 'kafka'"),
    ("a b/ns/t", "tenant 'a b'"),
    ("t/n s/x", "namespace 'n s'"),
    ("t/ns/my topic", "no spaces"),
]


@pytest.mark.parametrize(("name", "why"), BAD)
def test_malformed_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalize_topic(name)


PATTERNS = [
    ("in-.*", "persistent://public/default/in-.*"),
    ("acme/payments/audit-[0-9]+", "persistent://acme/payments/audit-[0-9]+"),
    ("persistent://acme/payments/a|b", "persistent://acme/payments/a|b"),
    ("acme/payments/x{1,3}/y", "persistent://acme/payments/x{1,3}/y"),
]


@pytest.mark.parametrize(("pattern", "full"), PATTERNS)
def test_patterns_are_normalised_and_compiled(pattern: str, full: str) -> None:
    assert normalize_topic(pattern, pattern=True) == full


def test_a_pattern_must_compile() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        normalize_topic("in-(", pattern=True)
    with pytest.raises(ValueError, match="namespace"):
        normalize_topic("acme/pay.*ments/x", pattern=True)
