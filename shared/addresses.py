"""Email addresses as the standards measure and compare them: lengths in octets, domains in one form.

A leaf (the standard library and `idna` only): the contract, the policy, the Exchange client and
the log masking all use it, so an address is judged the same way everywhere.
"""

from __future__ import annotations

# The `idna` package (IDNA 2008 with UTS #46 mapping), not Python's built-in "idna" codec, which is
# IDNA 2003; email-validator, which normalises the contract's addresses, uses this package too.
import idna

# RFC 5321, 4.5.3.1: a local part of at most 64 octets and a domain of at most 255; a path of at most
# 256 octets, which with its angle brackets leaves 254 for the address (RFC 3696 erratum 1690).
LOCAL_PART_MAX_OCTETS = 64
DOMAIN_MAX_OCTETS = 255
ADDRESS_MAX_OCTETS = 254


def normal_domain(domain: str) -> str:
    """The domain's ASCII form (A-labels, lower case), so `müller.example`, `MÜLLER.example` and
    `xn--mller-kva.example` are one domain. Raises ValueError for a name that is not a valid IDN."""
    try:
        return idna.encode(domain.strip().rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"not a valid domain name: {error}") from None


def normal_address(address: str) -> str:
    """One spelling of an address for comparing: the local part case-folded (Exchange and Entra match
    addresses without regard to case), the domain in its ASCII form; unparseable text only case-folded."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().casefold()
    try:
        return f"{local.casefold()}@{normal_domain(domain)}"
    except ValueError:
        return f"{local.casefold()}@{domain.casefold()}"


def same_address(one: str, other: str) -> bool:
    return normal_address(one) == normal_address(other)


def within_rfc5321_lengths(address: str) -> str:
    """`address` if its parts fit RFC 5321's limits in octets (UTF-8, the domain as sent over SMTP:
    its ASCII form); raises ValueError naming the part that does not."""
    local, _, domain = address.rpartition("@")
    local_octets = len(local.encode("utf-8"))
    if local_octets > LOCAL_PART_MAX_OCTETS:
        raise ValueError(f"the part before @ is {local_octets} octets; RFC 5321 allows at most {LOCAL_PART_MAX_OCTETS}")
    try:
        domain_octets = len(normal_domain(domain))
    except ValueError:
        domain_octets = len(domain.encode("utf-8"))
    if domain_octets > DOMAIN_MAX_OCTETS:
        raise ValueError(f"the domain is {domain_octets} octets; RFC 5321 allows at most {DOMAIN_MAX_OCTETS}")
    whole = len(local.encode("utf-8")) + 1 + domain_octets
    if whole > ADDRESS_MAX_OCTETS:
        raise ValueError(f"the address is {whole} octets; at most {ADDRESS_MAX_OCTETS} fit an SMTP path")
    return address
