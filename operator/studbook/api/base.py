"""The building blocks every Studbook API type shares.

* :class:`ApiModel`: camelCase on the wire, unknown fields refused, strict types (a string is
  never taken for a number), field docstrings become the CRD field descriptions.
* :class:`Rule`: one validation rule written twice on purpose, as a CEL expression the API server
  evaluates (``x-kubernetes-validations``) and as the same predicate in Python, so a manifest is
  refused with the same message by the CLI, the webhook and the API server.
* :class:`OneOf`: the Kubernetes union convention (KEP-1027): a ``kind`` discriminator plus one
  optional member per kind, exactly the named member set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A validation rule of one API type, evaluated by the API server and by Python alike."""

    cel: str
    """The CEL expression; ``self`` is the object the rule is attached to."""
    message: str
    """The refusal message, naming the field at fault."""
    check: Callable[[Any], bool] | None = None
    """The same predicate in Python; ``None`` only for transition rules (``oldSelf``)."""
    field_path: str | None = None
    """The JSONPath (relative to ``self``) the API server reports the error at."""

    def as_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry of this rule."""
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


# CEL reserved words must be escaped as __word__ when used as property names.
CEL_RESERVED = frozenset(
    {
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
        "in",
        "true",
        "false",
        "null",
    }
)


def cel_field(name: str) -> str:
    """A property name as CEL must spell it."""
    return f"__{name}__" if name in CEL_RESERVED else name


class ApiModel(BaseModel):
    """Base of every Studbook API object: camelCase aliases, strict, closed, documented."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        frozen=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Validation rules of this type (CEL for the API server, Python for everyone else)."""

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                # The field path travels in the error context so callers can name the field.
                raise PydanticCustomError(
                    "rule", rule.message, {"field_path": rule.field_path or ""}
                )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        validations = [rule.as_schema() for rule in cls.schema_rules()]
        if validations:
            target["x-kubernetes-validations"] = validations
        return schema

    @classmethod
    def schema_rules(cls) -> tuple[Rule, ...]:
        """Every rule the CRD schema carries for this type."""
        return cls.rules

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class OneOf(ApiModel):
    """A union in the Kubernetes convention: ``kind`` names the single member that is set.

    Subclasses declare ``kind`` as a ``Literal`` and one optional field per kind value, whose wire
    name equals that value.
    """

    @classmethod
    def _members(cls) -> dict[str, str]:
        """Python attribute name of each member, by its wire name."""
        return {
            (field.alias or name): name
            for name, field in cls.model_fields.items()
            if name != "kind"
        }

    @classmethod
    def schema_rules(cls) -> tuple[Rule, ...]:
        """The union rule, in CEL, plus the type's own rules."""
        members = cls._members()
        clauses = " && ".join(
            f"((self.kind == '{wire}') == has(self.{cel_field(wire)}))" for wire in members
        )
        union = Rule(cel=clauses, message="exactly the member named by kind must be set")
        return (union, *cls.rules)

    @model_validator(mode="after")
    def _exactly_named_member(self) -> Self:
        kind = getattr(self, "kind")  # noqa: B009 - declared by every subclass
        present = [
            wire for wire, attr in self._members().items() if getattr(self, attr) is not None
        ]
        if present != [kind]:
            found = ", ".join(present) if present else "none"
            raise ValueError(
                f"kind is {kind!r}, so exactly the member {kind!r} must be set (set: {found})"
            )
        return self
