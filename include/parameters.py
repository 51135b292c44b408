r"""Parameters declared once: a field's default, description, accepted values and form field.

A configuration (:class:`include.config.RunConfig`, :class:`include.config.TuningConfig`) is a
frozen dataclass of :class:`Declared` whose fields are made with :func:`declare`. From those
declarations alone come the checks a value must pass when the configuration loads (finite numbers,
an :class:`Interval`, a list of choices or a ``Literal`` type, distinct names from a list), the
messages that name a refused field, a DAG's trigger form (:func:`trigger_form`, Airflow
``Param``\ s) and the docs' parameter table (:func:`accepts`). As scikit-learn declares an
estimator's ``_parameter_constraints`` once and validates them in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from include.errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """The accepted values of a number: from ``low`` to ``high``, each end included unless open.

    Checked by :class:`RunConfig` for its field, shown as the trigger form's ``minimum`` /
    ``exclusiveMinimum`` / ``maximum`` / ``exclusiveMaximum`` (JSON Schema) and in the message of
    a refused value.

    Attributes:
        low: smallest value, ``None`` for no lower end.
        high: largest value, ``None`` for no upper end.
        low_open: ``low`` itself is refused.
        high_open: ``high`` itself is refused.
        what: what the number is, for the message ("a number", "a fraction", "a level").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = "a number"

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def expected(self) -> str:
        """What a refused value's message says was expected, e.g. ``a number from 14 to 36,525``,
        ``a fraction in [0, 1)``, ``a positive number``."""
        if self.high is None and self.low == 0 and self.low_open:
            return f"a positive {self.what.removeprefix('a ')}"
        closed = not (self.low_open or self.high_open) and self.low is not None and self.high is not None
        if closed and self.what == "a number":
            return f"{self.what} from {self.low:,} to {self.high:,}"
        low = "(" if self.low_open or self.low is None else "["
        high = ")" if self.high_open or self.high is None else "]"
        return f"{self.what} in {low}{_end(self.low, '-inf')}, {_end(self.high, 'inf')}{high}"

    def schema(self) -> dict[str, float]:
        """The interval as JSON Schema keywords."""
        out: dict[str, float] = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out


def _end(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:,}"


@dataclass(frozen=True)
class FormField:
    """How a parameter appears in a DAG's trigger form.

    Attributes:
        section: the form's section.
        title: the field's label.
        schema: further JSON Schema keywords (``format``, ``examples``, ``minItems``).
    """

    section: str
    title: str
    schema: dict[str, Any] = field(default_factory=dict)


def declare(text: str, *, interval: Interval | None = None, choices: tuple[Any, ...] | None = None,
         members: Any = None, form: FormField | None = None, **kwargs: Any) -> Any:
    """A dataclass field with everything declared about it, in its metadata: the one place a
    parameter's default, description, accepted values and trigger-form field are written.

    Args:
        text: the field's description (trigger form, docs' parameter table).
        interval: for a number, the accepted values (checked, shown as the form's bounds).
        choices: the accepted values of a field whose type does not name them (a ``Literal``
            type does); checked, shown as the form's ``enum``.
        members: for a tuple of names, a function returning the names it may hold (checked:
            distinct names from these; shown as the form's item ``enum``).
        form: how the field appears in the trigger form; ``None``: not in the form (still a
            key of ``--conf`` and of a market's entry in the universe file).
        **kwargs: passed to :func:`dataclasses.field` (``default``, ``default_factory``).
    """
    metadata: dict[str, Any] = {"description": text}
    for key, value in (("interval", interval), ("choices", choices), ("members", members), ("form", form)):
        if value is not None:
            metadata[key] = value
    return field(metadata=metadata, **kwargs)


def one_of(values: Any) -> str:
    """``'a', 'b' or 'c'``: a list of accepted values, for a message."""
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


@functools.cache
def type_hints(owner: type) -> dict[str, Any]:
    """``owner``'s resolved type hints (:func:`typing.get_type_hints`), once per class: resolving
    them costs milliseconds, and a configuration is checked field by field each time it is built."""
    return typing.get_type_hints(owner)


def field_choices(owner: type, f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The values field ``f`` of class ``owner`` accepts when they are a list: its declared
    ``choices`` or its ``Literal`` type's; ``None`` for any other field."""
    if "choices" in f.metadata:
        return tuple(f.metadata["choices"])
    hint = type_hints(owner)[f.name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def json_type(owner: type, f: dataclasses.Field) -> str | list[str]:
    """The JSON Schema ``type`` of field ``f`` of class ``owner``, from its type hint."""
    hint = type_hints(owner)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = {str: "string", int: "integer", float: "number", bool: "boolean", tuple: "array", dict: "object"}
    if typing.get_origin(hint) is Literal:
        base = names[type(args[0])]
    else:
        base = names.get(typing.get_origin(hint) or hint) or names[typing.get_origin(args[0]) or args[0]]
    return ["null", base] if type(None) in typing.get_args(hint) else base


def accepts(owner: type, f: dataclasses.Field) -> str:
    """What field ``f`` of class ``owner`` accepts, in words, for a parameter table."""
    if "interval" in f.metadata:
        return f.metadata["interval"].expected()
    if field_choices(owner, f) is not None:
        return one_of(field_choices(owner, f))
    if "members" in f.metadata:
        return "distinct names (see the description)"
    return ""


class Declared:
    """A configuration whose fields are made with :func:`declare`: checked when it is built,
    built from a run's params, shown as a dict and in a trigger form.

    A subclass is a frozen dataclass; its ``__post_init__`` calls :meth:`check_declared` and then
    checks what involves several fields.
    """

    #: What a field's name is prefixed with as a run parameter (``monitor_`` for the monitoring policy).
    PARAM_PREFIX: typing.ClassVar[str] = ""

    def check_declared(self) -> None:
        """What each field's declaration says of its values: finite numbers, its interval, its
        choices (declared, or a ``Literal`` type's) and, for a tuple of names, its members.

        Raises:
            ConfigError: naming the first refused field, its value and what was expected.
        """
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            # First, because every comparison with NaN is false: a NaN would pass each check below.
            members = (value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list)
                       else (value,))
            if any(isinstance(v, float) and not math.isfinite(v) for v in members):
                self.fail(f.name, "expected finite numbers only (no NaN, no infinity)")
            if value is None:
                if f.default is not None:  # only a field whose default is None may be None
                    self.fail(f.name, "expected a value (None is not one of its values)")
                continue
            interval = f.metadata.get("interval")
            if interval is not None and value not in interval:
                self.fail(f.name, f"expected {interval.expected()}")
            choices = field_choices(type(self), f)
            if choices is not None and value not in choices:
                self.fail(f.name, f"expected {one_of(choices)}")
            if "members" in f.metadata:
                allowed = f.metadata["members"]()
                if set(value) - set(allowed) or len(set(value)) != len(value):
                    self.fail(f.name, f"expected distinct names from {list(allowed)}")

    def fail(self, name: str, why: str) -> typing.NoReturn:
        """Refuse field ``name``'s value.

        Raises:
            ConfigError: ``invalid run parameter <name>=<value>: <why>``.
        """
        raise ConfigError(f"invalid run parameter {self.PARAM_PREFIX}{name}={getattr(self, name)!r}: {why}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> typing.Self:
        """Build the configuration from a DAG run's params (or any mapping of field names to values).

        ``None`` values mean "use the default" except for the optional fields that default to
        ``None``. Unknown keys are ignored, so a DAG may carry extra params of its own. A tuple
        field takes a list or a comma-separated string.

        Raises:
            ConfigError: a value has the wrong type or is out of range.
        """
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        hints = type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in params.items():
            if name not in known or (value is None and known[name].default is not None):
                continue
            if typing.get_origin(hints[name]) is tuple and value is not None:
                value = tuple(value) if not isinstance(value, str) else tuple(
                    v.strip() for v in value.split(",") if v.strip()
                )
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid run parameters: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view of every field (tuples as lists)."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Field name -> description, for Params and documentation."""
        return {f.name: f.metadata.get("description", "") for f in fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def intervals(cls) -> dict[str, Interval]:
        """Field name -> accepted values, for the numbers that declare them."""
        return {f.name: f.metadata["interval"] for f in fields(cls) if "interval" in f.metadata}  # type: ignore[arg-type]


def trigger_form(owner: type, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """A DAG's trigger form: an Airflow ``Param`` for every field of ``owner`` declared with a
    :class:`FormField`, section by section (in the order of ``sections``, then any other), in
    field order.

    Each carries the field's default (floats shown to 4 decimals: 1/3 is shown and used as
    0.3333), description, title and section, its interval as the schema's bounds, and its
    choices (or members, for a list of names) as an ``enum``.
    """
    from airflow.sdk import Param

    defaults, form = owner(), {}
    shown = [f for f in fields(owner) if "form" in f.metadata]
    order = {section: i for i, section in enumerate(sections)}
    for f in sorted(shown, key=lambda f: order.get(f.metadata["form"].section, len(order))):
        spec: FormField = f.metadata["form"]
        default = getattr(defaults, f.name)
        default = list(default) if isinstance(default, tuple) else round(default, 4) if isinstance(default, float) \
            else default
        schema: dict[str, Any] = dict(f.metadata["interval"].schema()) if "interval" in f.metadata else {}
        if field_choices(owner, f) is not None:
            schema["enum"] = list(field_choices(owner, f))
        if "members" in f.metadata:
            schema["items"] = {"type": "string", "enum": list(f.metadata["members"]())}
        form[f.name] = Param(default, type=json_type(owner, f), description=f.metadata["description"],
                             title=spec.title, section=spec.section, **schema, **spec.schema)
    return form
