"""Flows as written: the YAML's fields and types, checked by pydantic before anything compiles.

Each `...Spec` is a part of a flow file; `parse_spec` checks a whole definition (its
schedules' inputs against its input schema too) without compiling any expression, so
tools that only read a flow (`python -m service schedules`) need no environment.
service/engine/flow.py compiles a spec into the flow that runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from service.durations import duration_s
from service.errors import FlowError
from service.retry import RetryPolicy

# Bounds the execution document: each step's outcome takes at most 16 KiB of it inline.
MAX_FLOW_STEPS = 50
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?-]+")
_RATE = re.compile(r"(\d+(?:\.\d+)?)/([smh])")
PRIMARY = "primary"  # the variant name of a step's own `call:`
_SHARE = re.compile(r"(\d{1,3}(?:\.\d+)?)%")
_FIELD_TYPES: dict[str, Any] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": float,
    "object": dict[str, Any],
    "array": list[Any],
}


class InputField(BaseModel):
    """One declared field of a flow's input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["string", "boolean", "integer", "number", "object", "array"]
    required: bool = False
    default: Any = None
    max_length: int = Field(1000, ge=1, le=100_000)
    description: str | None = None


Duration = Annotated[str | float, AfterValidator(duration_s)]


class PollSpec(BaseModel):
    """`poll:` the step's answer is a long-running operation, read at `url` until done."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    until: str = "${response.done}"
    every: Duration = 30.0
    max_every: Duration | None = None
    timeout: Duration = 86_400.0


class CallbackSpec(BaseModel):
    """`callback:` after the call, wait until `${callback.url}` is POSTed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: Duration = 86_400.0


class CacheSpec(BaseModel):
    """`cache:` reuse a fresh answer of this step for the same `key` (CEL) for `ttl`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    ttl: Duration


class LimitSpec(BaseModel):
    """`limit:` calls of every step with this `key` bounded across every instance together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    concurrency: int | None = Field(None, ge=1, le=100_000, description="calls in flight")
    rate: str | None = Field(None, description="calls started per second, minute or hour: 50/s")

    @field_validator("rate")
    @classmethod
    def _per_unit(cls, value: str | None) -> str | None:
        if value is not None and _RATE.fullmatch(value.strip()) is None:
            raise ValueError(f"{value!r} is not a rate such as 50/s, 600/m or 1000/h")
        return value

    @model_validator(mode="after")
    def _bounds_something(self) -> LimitSpec:
        if self.concurrency is None and self.rate is None:
            raise ValueError("give concurrency, rate or both")
        return self

    @property
    def per_second(self) -> float | None:
        if self.rate is None:
            return None
        match = _RATE.fullmatch(self.rate.strip())
        assert match is not None
        return float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)]


class ToleranceSpec(BaseModel):
    """`tolerate:` a for_each step succeeds while its failed items are at most `failures`:
    a count (3) or a share of its items (10%)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: StrictInt | str

    @field_validator("failures")
    @classmethod
    def _count_or_share(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"{value} is not a count of items (0 or more)")
            return value
        match = _SHARE.fullmatch(value.strip())
        if match is None or float(match.group(1)) > 100:
            raise ValueError(f"{value!r} is neither a count (3) nor a share (10%)")
        return value.strip()

    def allows(self, failed: int, items: int) -> bool:
        """Whether `failed` of `items` are within what the step tolerates."""
        if isinstance(self.failures, int):
            return failed <= self.failures
        share = float(self.failures.removesuffix("%"))
        return failed * 100 <= share * items


class VariantSpec(BaseModel):
    """One of `variants:`: a candidate URL that gets `weight` (a share, 5%) of the calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    call: str
    weight: str
    audience: str | None = None

    @field_validator("name")
    @classmethod
    def _not_primary(cls, value: str) -> str:
        if value == PRIMARY:
            raise ValueError(f"{PRIMARY!r} names the step's own call")
        return value

    @field_validator("weight")
    @classmethod
    def _share(cls, value: str) -> str:
        match = _SHARE.fullmatch(value.strip())
        if match is None or not 0 < float(match.group(1)) <= 100:
            raise ValueError(f"{value!r} is not a share of the calls, more than 0% up to 100%")
        return value.strip()

    @property
    def share(self) -> float:
        return float(self.weight.removesuffix("%"))


class ShadowSpec(BaseModel):
    """`shadow:` a copy of the step's call to a candidate URL, for `sample` (a share) of the
    executions; its answer is recorded beside the step's and compared (`compare`, CEL over
    `response` and `shadow`; else equal JSON), never used."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    call: str
    sample: str = "100%"
    compare: str | None = None
    timeout_s: float | None = Field(None, gt=0, le=600, description="the step's by default")
    audience: str | None = None

    @field_validator("sample")
    @classmethod
    def _share(cls, value: str) -> str:
        match = _SHARE.fullmatch(value.strip())
        if match is None or not 0 < float(match.group(1)) <= 100:
            raise ValueError(f"{value!r} is not a share of the executions, more than 0% up to 100%")
        return value.strip()

    @property
    def share(self) -> float:
        return float(self.sample.removesuffix("%"))


class StepSpec(BaseModel):
    """A step as written in YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    call: str | None = None
    flow: str | None = Field(None, description="a flow of FLOWS_DIR, run as a child execution")
    input: Any = None  # a flow step's child input (CEL, like `body`)
    timeout: Duration | None = None  # a flow step's: its children's whole wait (24h)
    auth: Literal["id_token", "access_token", "none"] = "id_token"
    poll: PollSpec | None = None
    callback: CallbackSpec | None = None
    sleep: Duration | None = None
    sleep_until: str | None = None
    cache: CacheSpec | None = None
    limit: LimitSpec | None = None
    variants: list[VariantSpec] | None = Field(None, min_length=1, max_length=10)
    variant_key: str | None = None  # CEL: whose calls stick to one variant (the execution id)
    shadow: ShadowSpec | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    body: Any = None
    after: list[str] = Field(default_factory=list)
    when: str | None = None
    for_each: str | None = None
    max_concurrency: int = Field(10, ge=1, le=1000)
    tolerate: ToleranceSpec | None = None
    timeout_s: float = Field(60, gt=0, le=600)
    retry: RetryPolicy = RetryPolicy()
    on_error: Literal["fail", "continue"] = "fail"
    audience: str | None = None
    output: Any = None


class ScheduleSpec(BaseModel):
    """`schedules:` an execution of the flow with `input` at each `cron` time (Cloud Scheduler)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    cron: str = Field(description="unix-cron: minute hour day-of-month month day-of-week")
    time_zone: str = "Etc/UTC"
    input: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(field) for field in fields):
            raise ValueError(f"{value!r} is not unix-cron (five fields, e.g. '0 6 * * 1-5')")
        return " ".join(fields)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a tz database time zone") from None
        return value


# Pub/Sub's topic names, alone (of the project) or whole (of any project).
TOPIC = re.compile(
    r"(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/)?"  # a project id
    r"[A-Za-z][A-Za-z0-9_.~+%-]{2,254}"
)


class TriggerSpec(BaseModel):
    """`triggers:` an execution of the flow for each message published to `topic` that
    `when` (CEL over `event`) lets in, with `input` made from it (CEL over `event`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    topic: str = Field(description="a topic of the project, or projects/PROJECT/topics/TOPIC")
    when: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not TOPIC.fullmatch(value):
            raise ValueError(
                "not a topic: 3 to 255 letters, digits and - _ . ~ + %, starting with a "
                "letter, or projects/PROJECT/topics/TOPIC"
            )
        return value


class FlowSpec(BaseModel):
    """A flow file as written in YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str | None = None
    input: dict[str, InputField] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1, max_length=MAX_FLOW_STEPS)
    result: Any = None
    schedules: list[ScheduleSpec] = Field(default_factory=list, max_length=20)
    triggers: list[TriggerSpec] = Field(default_factory=list, max_length=20)

    @field_validator("schedules", "triggers")
    @classmethod
    def _unique_names(
        cls, value: list[ScheduleSpec] | list[TriggerSpec], info: ValidationInfo
    ) -> list[ScheduleSpec] | list[TriggerSpec]:
        names = [each.name for each in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"two {info.field_name} named {repeated[0]!r}")
        return value


def parse_spec(name: str, raw: Any, file: str) -> FlowSpec:
    """A definition as its spec: fields, types, schedules and the fields triggers map checked,
    nothing compiled."""
    try:
        spec = FlowSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = error["loc"]
        step = str(location[1]) if location[:1] == ("steps",) and len(location) > 1 else None
        field = ".".join(str(part) for part in location)
        reason = error["msg"].removeprefix("Value error, ")
        raise FlowError(file, f"{field}: {reason}", step) from None
    model = input_model(name, spec.input)
    for n, schedule in enumerate(spec.schedules):
        try:
            model.model_validate(schedule.input)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            raise FlowError(file, f"schedules.{n}.input.{field}: {error['msg']}") from None
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    for n, trigger in enumerate(spec.triggers):  # its values are CEL: only known when it fires
        for field in required:
            if field not in trigger.input:
                raise FlowError(file, f"triggers.{n}.input.{field}: Field required")
    return spec


def input_model(flow: str, fields: Mapping[str, InputField]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for name, field in fields.items():
        python_type = _FIELD_TYPES[field.type]
        constraints: dict[str, Any] = {"description": field.description}
        if field.type == "string":
            constraints["max_length"] = field.max_length
        default = ... if field.required else field.default
        annotation = python_type if field.required or default is not None else python_type | None
        definitions[name] = (annotation, Field(default, **constraints))
    model: type[BaseModel] = create_model(
        f"{flow}-input", __config__=ConfigDict(extra="allow"), **definitions
    )
    return model
