"""The envelope of every Studbook custom resource and the CRD facts kept beside each kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from studbook import GROUP, VERSION
from studbook.api.base import ApiModel
from studbook.api.common import DNS_LABEL

API_VERSION: Final = "breeding.studbook.dev/v1alpha1"
"""``apiVersion`` of every Studbook resource."""
assert f"{GROUP}/{VERSION}" == API_VERSION


class ObjectMeta(BaseModel):
    """The parts of ``metadata`` Studbook reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    name: Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
    """The object's name."""
    namespace: str | None = None
    """The object's namespace."""
    labels: dict[str, str] = {}
    """Labels."""
    annotations: dict[str, str] = {}
    """Annotations."""
    generation: int | None = None
    """The spec generation, set by the API server."""
    uid: str | None = None
    """The object's UID, set by the API server."""


@dataclass(frozen=True)
class PrinterColumn:
    """A column ``kubectl get`` shows."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class CrdInfo:
    """What the CRD says of a kind beyond its schema."""

    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...] = ()
    immutable_spec: bool = False
    categories: tuple[str, ...] = ("breeding",)


class Resource(ApiModel):
    """A Studbook custom resource: ``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``."""

    model_config = ConfigDict(alias_generator=None)

    api_version: Literal["breeding.studbook.dev/v1alpha1"] = Field(
        default=API_VERSION, alias="apiVersion"
    )
    """The API group and version."""
    metadata: ObjectMeta
    """Standard object metadata."""

    crd: ClassVar[CrdInfo]
    """CRD facts of the kind."""

    @classmethod
    def kind_name(cls) -> str:
        """The resource kind, as in manifests."""
        kind: Any = cls.model_fields["kind"].default
        return str(kind)
