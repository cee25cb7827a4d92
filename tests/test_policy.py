"""The policy file: which domains are blocked, whatever spelling the file or the request uses."""

from __future__ import annotations

import pytest

from shared.policy import OnboardingPolicy


def policy(*blocked: str) -> OnboardingPolicy:
    return OnboardingPolicy.model_validate({"blocked_domains": list(blocked)})


@pytest.mark.parametrize(
    "entry", ["xn--mller-kva.example", "müller.example", "MÜLLER.Example", "XN--MLLER-KVA.example"]
)
@pytest.mark.parametrize(
    "address", ["jürgen@müller.example", "j@xn--mller-kva.example", "j@MÜLLER.EXAMPLE", "j@mail.müller.example"]
)
def test_a_blocked_domain_blocks_every_spelling_of_it(entry: str, address: str) -> None:
    assert policy(entry).domain_blocked(address)


def test_a_blocked_domain_blocks_its_subdomains_and_nothing_that_only_ends_like_it() -> None:
    blocked = policy("müller.example")
    assert not blocked.domain_blocked("j@xmüller.example")
    assert not blocked.domain_blocked("j@mueller.example")
    assert not blocked.domain_blocked("j@fabrikam.example")


def test_an_entry_that_is_not_a_domain_name_is_refused_when_the_policy_loads() -> None:
    with pytest.raises(ValueError, match="blocked_domains"):
        policy("not a domain")
