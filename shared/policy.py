"""Which source systems may put whom into which group: deny unless listed.

Loaded from a JSON file (setting ONBOARDING_POLICY_FILE). Groups are named by SMTP address or
object id; "*" means any group. The file format is in docs/settings.md.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.addresses import normal_address, normal_domain
from shared.contracts import LEASE_MAX, SPONSORS_MAX

ANY_GROUP = "*"
INTAKE_QUEUE = "create-contact"  # the shared intake: every source's, unless the policy gives it its own


def _lower_all(values: list[str]) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in values)


class SourcePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_groups: frozenset[str] = Field(min_length=1)
    intake_queue: str = Field(
        default=INTAKE_QUEUE,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$",
        description="The only queue this source's requests may arrive on. Sources that share a queue can "
        "speak for each other; a queue of its own (ONBOARDING_INTAKE_QUEUES) that only its identity may "
        "send to makes the source a fact, not a claim (docs/security.md).",
    )

    @field_validator("allowed_groups", mode="before")
    @classmethod
    def _normalise(cls, values: list[str]) -> frozenset[str]:
        return _lower_all(values)


class GroupPolicy(BaseModel):
    """What the policy gives every onboarding into one group, unless the request says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_lease: timedelta | None = Field(
        default=None,
        description="A lease for every onboarding that names no expires_at: an ISO 8601 duration (P90D) from "
        "when the request is accepted, at most three years (docs/leases.md).",
    )
    sponsors: tuple[uuid.UUID, ...] = Field(
        default=(),
        max_length=SPONSORS_MAX,
        description="Object ids of the users or groups a new guest is invited with as sponsors, when the "
        "request names none (Graph invitedUserSponsors; at most five).",
    )

    @field_validator("default_lease")
    @classmethod
    def _bounded(cls, lease: timedelta | None) -> timedelta | None:
        if lease is not None and not timedelta(0) < lease <= LEASE_MAX:
            raise ValueError(f"default_lease must be more than 0 and at most {LEASE_MAX.days} days")
        return lease


class OnboardingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, SourcePolicy] = Field(default_factory=dict)
    groups: dict[str, GroupPolicy] = Field(
        default_factory=dict,
        description="Per group (SMTP address or object id; '*' for any other): a default lease and sponsors.",
    )
    blocked_domains: frozenset[str] = frozenset()
    sender_authentication_fix_allowed: frozenset[str] = Field(
        default=frozenset(),
        description="Groups whose RequireSenderAuthenticationEnabled the app may turn off (5.7.133 fix).",
    )

    @field_validator("groups", mode="before")
    @classmethod
    def _group_names(cls, groups: dict[str, object]) -> dict[str, object]:
        return {name.strip().lower(): rules for name, rules in groups.items()}

    @field_validator("sender_authentication_fix_allowed", mode="before")
    @classmethod
    def _normalise(cls, values: list[str]) -> frozenset[str]:
        return _lower_all(values)

    @field_validator("blocked_domains", mode="before")
    @classmethod
    def _normal_domains(cls, values: list[str]) -> frozenset[str]:
        """Each domain in its ASCII form, however the file spells it (xn--mller-kva.example = müller.example)."""
        domains = set()
        for value in values:
            try:
                domains.add(normal_domain(value))
            except ValueError as error:
                raise ValueError(f"blocked_domains: {value!r} is {error}") from None
        return frozenset(domains)

    @classmethod
    def load(cls, path: Path) -> OnboardingPolicy:
        """The policy in `path`; PolicyFileError says in one line why it cannot be used."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise PolicyFileError("the file does not exist") from None
        except IsADirectoryError:
            raise PolicyFileError("that is a directory, not a file") from None
        except PermissionError:
            raise PolicyFileError("the app may not read the file") from None
        except ValidationError as error:
            raise PolicyFileError("not a valid policy: " + _one_line(error)) from None

    def domain_blocked(self, address: str) -> bool:
        domain = normal_address(address).rsplit("@", 1)[-1]  # the same ASCII form as the entries
        return any(domain == blocked or domain.endswith("." + blocked) for blocked in self.blocked_domains)

    def source_known(self, source_system: str) -> bool:
        return source_system in self.sources

    def intake_refusal(self, source_system: str, queue: str) -> str | None:
        """Why a request claiming this source may not come through this queue; None when it may."""
        expected = self.sources[source_system].intake_queue
        if queue.lower() == expected.lower():
            return None
        return (
            f"Source system {source_system!r} sends through queue {expected!r}; this request came through "
            f"{queue!r}, whose senders may not speak for it."
        )

    def group_allowed(self, source_system: str, group_id: str, group_mail: str | None) -> bool:
        source = self.sources.get(source_system)
        return source is not None and _matches(source.allowed_groups, group_id, group_mail)

    def group_rules(self, group_id: str, group_mail: str | None) -> GroupPolicy:
        """The group's own entry (by id, then by address), else the '*' entry, else nothing given."""
        for name in (group_id.lower(), (group_mail or "").lower(), ANY_GROUP):
            if name and name in self.groups:
                return self.groups[name]
        return GroupPolicy()

    def uses_leases(self) -> bool:
        return any(rules.default_lease is not None for rules in self.groups.values())

    def sender_authentication_fix_allowed_for(self, group_id: str, group_mail: str | None) -> bool:
        return _matches(self.sender_authentication_fix_allowed, group_id, group_mail)


class PolicyFileError(ValueError):
    """The policy file cannot be used; the message is one line (the caller names the file)."""


def _one_line(error: ValidationError) -> str:
    """pydantic's problems on one line: `sources.hr.allowed_groups: Field required; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" if problem["loc"] else problem["msg"]
        for problem in error.errors()
    )


def _matches(names: frozenset[str], group_id: str, group_mail: str | None) -> bool:
    return ANY_GROUP in names or group_id.lower() in names or (group_mail or "").lower() in names
