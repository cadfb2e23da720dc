"""Peewee queries whose SQL text is generated once per database, bound per call.

A query is written with :class:`Param` placeholders where its per-call values
go; :func:`compile_query` has peewee generate its text once for a database's
dialect (placeholders, quoting, ``RETURNING``) and records, for each
placeholder, the conversion peewee would apply to a value there (the field's
``db_value``). :meth:`Statement.bind` then makes the parameters of one call
without generating SQL again. The text and the conversions are peewee's; only
the work of producing them is not repeated.

What peewee cannot express (PostgreSQL's data-modifying CTEs) is written as SQL
text with ``{name}`` placeholders and prepared the same way, once, by
:func:`compile_text`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import peewee

__all__ = ["Param", "Statement", "compile_query", "compile_text"]


class Param:
    """A named placeholder in a peewee query: ``MessageRow.id == Param("id")``.

    A name may appear more than once; every occurrence takes the same value.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Param({self.name!r})"


class _Slot:
    """Where a :class:`Param` landed in the parameter list, and how peewee converts its value."""

    __slots__ = ("converter", "name")

    def __init__(self, name: str, converter: Callable[[Any], Any] | None) -> None:
        self.name = name
        self.converter = converter


class _TemplateContext(peewee.Context):  # type: ignore[misc]
    """Peewee's SQL context, leaving a :class:`_Slot` where a :class:`Param` goes.

    ``value`` is where peewee turns every value into a placeholder (in WHERE,
    SET and VALUES alike), with the converter it resolved for that position;
    the slot records that converter, and peewee itself adds the slot as the
    parameter (``converter=False``: as it is).
    """

    __slots__ = ()

    def value(self, value: Any, converter: Any = None, add_param: bool = True) -> Any:
        if not isinstance(value, Param):
            return super().value(value, converter, add_param)
        if converter is None:  # False means "do not convert", as in peewee
            converter = self.state.converter
        return super().value(_Slot(value.name, converter or None), False, add_param)


class Statement:
    """One query's SQL text for one database, and how to make its parameters."""

    __slots__ = ("_constants", "_slots", "names", "sql")

    def __init__(self, sql: str, params: list[Any]) -> None:
        self.sql = sql
        #: the parameters that are the same on every call (literals in the query)
        self._constants = [None if isinstance(p, _Slot) else p for p in params]
        self._slots = tuple(
            (i, p.name, p.converter) for i, p in enumerate(params) if isinstance(p, _Slot)
        )
        self.names = frozenset(name for _, name, _ in self._slots)

    def bind(self, values: Mapping[str, Any]) -> list[Any]:
        """The parameters for ``values`` (by :class:`Param` name), converted as peewee would."""
        params = self._constants.copy()
        for i, name, converter in self._slots:
            value = values[name]
            params[i] = value if converter is None else converter(value)
        return params

    def __repr__(self) -> str:
        return f"Statement({self.sql!r})"


def compile_query(database: peewee.Database, query: peewee.Node) -> Statement:
    """Generate ``query``'s text for ``database``'s dialect, once."""
    context = _TemplateContext(**database.get_context_options())
    sql, params = context.sql(query).query()
    return Statement(sql, params)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def compile_text(
    database: peewee.Database,
    text: str,
    converters: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Statement:
    """SQL written by hand, with ``{name}`` where a per-call value goes, for ``database``.

    Each placeholder becomes the driver's (``%s`` or ``?``); a name may appear
    more than once. ``converters`` maps a name to what peewee would apply to
    its value (a field's ``db_value``); other values are bound as given. The
    text is not otherwise touched: on PostgreSQL a literal ``%`` must be ``%%``.
    """
    converters = converters or {}
    names = _PLACEHOLDER.findall(text)
    sql = _PLACEHOLDER.sub(lambda _: str(database.param), text)
    return Statement(sql, [_Slot(name, converters.get(name)) for name in names])
