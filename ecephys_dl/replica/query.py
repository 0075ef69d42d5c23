"""The replica's RMA query engine: parse the warehouse query language and evaluate it in memory.

The Allen warehouse answers ``GET /api/v2/data/query.json?<q>`` where ``q`` is written in RMA,
for example::

    criteria=model::EcephysSession,rma::include,specimen(donor(age)),
        rma::options[start_row$eq0][num_rows$eq5000][order$eq'id']

:func:`parse_query` turns such a string into a :class:`Query`; :func:`execute` evaluates it over
tables of flat records (one list per model, foreign keys as ``<x>_id`` fields) and returns the
JSON envelope the warehouse sends. Everything a query can name is in :data:`MODELS`. Anything
malformed or unknown raises :class:`QueryError`, whose text becomes the error envelope's ``msg``.

Id indexes are built lazily per records list and cached by the list's identity; the filtered and
ordered result of a query is cached without its paging options, because a paging client asks for
the same query a page at a time.
"""

from __future__ import annotations

import enum
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "MODELS",
    "Association",
    "AssociationKind",
    "Column",
    "Filter",
    "ModelSpec",
    "Node",
    "Options",
    "OrderKey",
    "Query",
    "QueryError",
    "Records",
    "Value",
    "error_envelope",
    "execute",
    "parse_query",
]

Records = Callable[[str], Sequence[Mapping[str, Any]]]
"""Model name -> its records, sorted by id; may raise KeyError for a model without data."""

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]


class QueryError(Exception):
    """The query cannot be parsed or evaluated; str(err) becomes the envelope's `msg` string."""


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


class AssociationKind(enum.StrEnum):
    """How an association finds its records."""

    BELONGS_TO = "belongs_to"  # the source holds the target's id in `key`
    HAS_MANY = "has_many"  # each target holds the source's id in `key`


@dataclass(frozen=True)
class Association:
    """A named link from one model to another, as used in ``rma::include`` and ``rma::criteria``."""

    name: str
    target: str
    kind: AssociationKind
    key: str
    # A polymorphic has-many also requires `type_field` on the target to equal `type_value`.
    type_field: str | None = None
    type_value: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model: its table name, its known fields and its associations."""

    name: str
    table: str
    # Known fields; a model's records may carry more (unit metrics are not listed here).
    fields: tuple[str, ...]
    associations: tuple[Association, ...] = ()

    def association(self, name: str) -> Association | None:
        """The association called `name`, or None."""
        for assoc in self.associations:
            if assoc.name == name:
                return assoc
        return None


_BT = AssociationKind.BELONGS_TO
_HM = AssociationKind.HAS_MANY


def _wkf(owner: str) -> Association:
    return Association(
        "well_known_files", "WellKnownFile", _HM, "attachable_id", "attachable_type", owner
    )


MODELS: Final[Mapping[str, ModelSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                "EcephysSession",
                "ecephys_sessions",
                (
                    "id",
                    "date_of_acquisition",
                    "fail_eye_tracking",
                    "isi_experiment_id",
                    "published_at",
                    "specimen_id",
                    "stimulus_name",
                ),
                (
                    Association("specimen", "Specimen", _BT, "specimen_id"),
                    _wkf("EcephysSession"),
                    Association("ecephys_probes", "EcephysProbe", _HM, "ecephys_session_id"),
                ),
            ),
            ModelSpec(
                "Specimen",
                "specimens",
                ("id", "name", "donor_id"),
                (Association("donor", "Donor", _BT, "donor_id"),),
            ),
            ModelSpec(
                "Donor",
                "donors",
                ("id", "sex", "full_genotype", "age_id"),
                (Association("age", "DonorAge", _BT, "age_id"),),
            ),
            ModelSpec("DonorAge", "donor_ages", ("id", "days", "name")),
            ModelSpec(
                "WellKnownFile",
                "well_known_files",
                (
                    "id",
                    "attachable_id",
                    "attachable_type",
                    "download_link",
                    "path",
                    "well_known_file_type_id",
                ),
                (
                    Association(
                        "well_known_file_type",
                        "WellKnownFileType",
                        _BT,
                        "well_known_file_type_id",
                    ),
                ),
            ),
            ModelSpec("WellKnownFileType", "well_known_file_types", ("id", "name")),
            ModelSpec(
                "EcephysProbe",
                "ecephys_probes",
                (
                    "id",
                    "air_channel_index",
                    "ecephys_session_id",
                    "lfp_sampling_rate",
                    "lfp_temporal_subsampling_factor",
                    "name",
                    "phase",
                    "sampling_rate",
                    "surface_channel_index",
                    "use_lfp_data",
                ),
                (
                    Association("ecephys_session", "EcephysSession", _BT, "ecephys_session_id"),
                    Association("ecephys_channels", "EcephysChannel", _HM, "ecephys_probe_id"),
                    _wkf("EcephysProbe"),
                ),
            ),
            ModelSpec(
                "EcephysChannel",
                "ecephys_channels",
                (
                    "id",
                    "ecephys_probe_id",
                    "local_index",
                    "probe_horizontal_position",
                    "probe_vertical_position",
                    "anterior_posterior_ccf_coordinate",
                    "dorsal_ventral_ccf_coordinate",
                    "left_right_ccf_coordinate",
                    "ecephys_structure_id",
                ),
                (
                    Association("ecephys_probe", "EcephysProbe", _BT, "ecephys_probe_id"),
                    Association("structure", "Structure", _BT, "ecephys_structure_id"),
                    Association("ecephys_units", "EcephysUnit", _HM, "ecephys_channel_id"),
                ),
            ),
            ModelSpec("Structure", "structures", ("id", "acronym", "name")),
            ModelSpec(
                "EcephysUnit",
                "ecephys_units",
                ("id", "ecephys_channel_id", "quality"),
                (
                    Association("ecephys_channel", "EcephysChannel", _BT, "ecephys_channel_id"),
                    Association(
                        "ecephys_unit_metric_bundles",
                        "EcephysUnitMetricBundle",
                        _HM,
                        "ecephys_unit_id",
                    ),
                ),
            ),
            ModelSpec(
                "EcephysUnitMetricBundle",
                "ecephys_unit_metric_bundles",
                ("id", "ecephys_unit_id", "data"),
                (Association("ecephys_unit", "EcephysUnit", _BT, "ecephys_unit_id"),),
            ),
        )
    }
)

_TABLE_TO_MODEL: Final[Mapping[str, str]] = MappingProxyType(
    {spec.table: spec.name for spec in MODELS.values()}
)

# --------------------------------------------------------------------------------------------
# The parsed form
# --------------------------------------------------------------------------------------------

# Written so that no two parts can match the same characters: no backtracking blow-up.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INTEGER = re.compile(r"[+-]?\d+\Z")


@dataclass(frozen=True)
class Value:
    """A value as written: its text (quotes removed) and whether it was quoted.

    Kept as text so that ``1`` and ``true`` stay distinct in a hashable query; :attr:`value`
    gives the typed reading.
    """

    text: str
    quoted: bool = False

    @property
    def value(self) -> Any:
        """None, a bool, an int, a float or a str: a quoted value is always a str."""
        if self.quoted:
            return self.text
        low = self.text.lower()
        if low == "null":
            return None
        if low in ("true", "false"):
            return low == "true"
        number = _number(self.text)
        return self.text if number is None else number


def _number(text: str) -> int | float | None:
    """`text` read as an int or a float, or None when it is not a number."""
    if not _NUMBER.match(text):
        return None
    if _INTEGER.match(text):
        try:
            return int(text)
        except ValueError:  # beyond the int-from-str digit limit
            return float(text)
    return float(text)


_OPERATORS: Final = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "in", "il"})


@dataclass(frozen=True)
class Filter:
    """``[field$op value]``; `values` holds one literal, or several for ``$in``."""

    field: str
    op: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Node:
    """An association in an include or criteria tree: ``name[filter]...(child,...)``."""

    name: str
    filters: tuple[Filter, ...] = ()
    children: tuple[Node, ...] = ()


@dataclass(frozen=True)
class OrderKey:
    """One ``order`` term: a root field, ascending unless `descending`."""

    field: str
    descending: bool = False


@dataclass(frozen=True)
class Column:
    """One ``tabular`` column: ``[table.]field [as alias]``; `table` None means the root's."""

    table: str | None
    field: str
    alias: str | None = None

    @property
    def name(self) -> str:
        """The output key."""
        return self.alias or self.field


@dataclass(frozen=True)
class Options:
    """The ``rma::options`` of a query; `num_rows` None means all (up to the page cap)."""

    start_row: int = 0
    num_rows: int | None = 50
    order: tuple[OrderKey, ...] = (OrderKey("id"),)
    tabular: tuple[Column, ...] | None = None


@dataclass(frozen=True)
class Query:
    """A parsed RMA query. Model and association names are checked; field names are not."""

    model: str
    filters: tuple[Filter, ...] = ()
    criteria: tuple[Node, ...] = ()
    includes: tuple[Node, ...] = ()
    options: Options = Options()


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_MAX_QUERY_CHARS: Final = 100_000
_MAX_DEPTH: Final = 32  # deeper nesting than any real schema path; keeps recursion bounded
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODEL_CLAUSE = re.compile(r"(?:criteria\s*=\s*)?model::\s*([A-Za-z_][A-Za-z0-9_]*)")
_FILTER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\$([A-Za-z]*)(.*)\Z", re.S)
_COLUMN = re.compile(
    r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\s+[Aa][Ss]\s+([A-Za-z_][A-Za-z0-9_]*))?\s*\Z"
)
_QUALIFIED = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*\Z")
_CLOSERS: Final = {"[": "]", "(": ")"}


def _show(text: str, limit: int = 80) -> str:
    """`text` quoted for an error message, shortened: a message must stay readable."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _scan(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """Each character of `text` from `start` outside quotes, with the bracket depth after it.

    Unbalanced brackets and an unterminated quote are QueryErrors, raised where they are found.
    """
    stack: list[str] = []
    quoted = False
    for i in range(start, len(text)):
        ch = text[i]
        if quoted:
            quoted = ch != "'"
            continue
        if ch == "'":
            quoted = True
            continue
        if ch in _CLOSERS:
            stack.append(_CLOSERS[ch])
        elif ch in ")]" and (not stack or stack.pop() != ch):
            raise QueryError(f"unbalanced {ch!r} at character {i} of {_show(text)}")
        yield i, ch, len(stack)
    if quoted:
        raise QueryError(f"unterminated quote in {_show(text)}")
    if stack:
        raise QueryError(f"missing {stack[-1]!r} in {_show(text)}")


def _find_close(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`, skipping quoted text."""
    for i, ch, depth in _scan(text, start):
        if depth == 0 and ch in ")]":
            return i
    raise QueryError(f"no bracket opens at character {start} of {_show(text)}")


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets, parentheses and quotes."""
    parts: list[str] = []
    begin = 0
    for i, ch, depth in _scan(text):
        if ch == "," and depth == 0:
            parts.append(text[begin:i])
            begin = i + 1
    parts.append(text[begin:])
    return parts


def _parse_literal(text: str) -> Value:
    """A bare or single-quoted value (``''`` inside quotes stands for one quote)."""
    s = text.strip()
    if not s:
        raise QueryError("a filter is missing its value")
    if s[0] == "'":
        out: list[str] = []
        i = 1
        while i < len(s):
            if s[i] == "'":
                if i + 1 < len(s) and s[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                if s[i + 1 :].strip():
                    raise QueryError(f"unexpected text after the quoted value in {_show(s)}")
                return Value("".join(out), quoted=True)
            out.append(s[i])
            i += 1
        raise QueryError(f"unterminated quote in {_show(s)}")
    if any(c in s for c in "'[](),"):
        raise QueryError(f"malformed value {_show(s)}")
    return Value(s)


def _parse_filter(content: str) -> Filter:
    """``field$op value`` (the text between the brackets)."""
    m = _FILTER.match(content)
    if m is None:
        raise QueryError(f"malformed filter {_show(f'[{content}]')}: expected [field$op value]")
    field, op, rest = m.group(1), m.group(2).lower(), m.group(3)
    # Operators are two letters and the value follows with no separator ("$eqtrue").
    op, rest = op[:2], op[2:] + rest
    if op not in _OPERATORS:
        raise QueryError(f"unknown operator ${op} in filter {_show(f'[{content}]')}")
    if op == "in":
        items = _split_top(rest)
        values = tuple(_parse_literal(item) for item in items)
    else:
        values = (_parse_literal(rest),)
    return Filter(field, op, values)


def _parse_filters(text: str, pos: int) -> tuple[tuple[Filter, ...], int]:
    """The ``[..][..]`` run starting at `pos`, and the position after it."""
    filters: list[Filter] = []
    while pos < len(text) and text[pos] == "[":
        end = _find_close(text, pos)
        filters.append(_parse_filter(text[pos + 1 : end]))
        pos = end + 1
    return tuple(filters), pos


def _parse_node(text: str, model: str, depth: int) -> Node:
    """One association tree of `model`: ``name[filter]...(child,...)``."""
    if depth > _MAX_DEPTH:
        raise QueryError(f"associations nested deeper than {_MAX_DEPTH} levels")
    text = text.strip()
    m = _NAME.match(text)
    if m is None:
        raise QueryError(f"expected an association name, got {_show(text)}")
    name = m.group(0)
    assoc = MODELS[model].association(name)
    if assoc is None:
        raise QueryError(f"unknown association {_show(name)} of model {model}")
    filters, pos = _parse_filters(text, m.end())
    children: tuple[Node, ...] = ()
    if pos < len(text) and text[pos] == "(":
        end = _find_close(text, pos)
        children = tuple(
            _parse_node(item, assoc.target, depth + 1) for item in _split_top(text[pos + 1 : end])
        )
        pos = end + 1
    if pos != len(text):
        raise QueryError(f"unexpected {_show(text[pos:])} after association {_show(name)}")
    return Node(name, filters, children)


def _option_text(raw: str) -> str:
    """An option value: quoted, or bare text that may contain commas."""
    if raw.strip().startswith("'"):
        return _parse_literal(raw).text
    return raw.strip()


def _parse_columns(text: str) -> tuple[Column, ...]:
    columns: list[Column] = []
    for item in text.split(","):
        m = _COLUMN.match(item)
        if m is None:
            raise QueryError(
                f"malformed tabular column {_show(item)}: expected [table.]field [as name]"
            )
        columns.append(Column(m.group(1), m.group(2), m.group(3)))
    names = [c.name for c in columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise QueryError(f"tabular names column {_show(duplicates[0])} more than once")
    return tuple(columns)


def _parse_order(text: str) -> tuple[OrderKey, ...]:
    keys: list[OrderKey] = []
    for item in text.split(","):
        words = item.split()
        if len(words) == 2:  # "field desc"
            field, direction = words
        elif len(words) == 1:  # "field" or "field$desc"
            field, _, direction = words[0].partition("$")
        else:
            field, direction = "", ""
        if direction.lower() not in ("", "asc", "desc") or not _QUALIFIED.match(field):
            raise QueryError(
                f"malformed order term {_show(item)}: expected field or field$desc"
            )
        # A table prefix is checked against the root model at execution time.
        keys.append(OrderKey(field, direction.lower() == "desc"))
    return tuple(keys)


def _non_negative(name: str, raw: str) -> int:
    text = _option_text(raw)
    if not _INTEGER.match(text):
        raise QueryError(f"{name} must be a non-negative integer, got {_show(text)}")
    if len(text) > 18:
        raise QueryError(f"{name} is too large: {_show(text, 24)}")
    value = int(text)
    if value < 0:
        raise QueryError(f"{name} must be a non-negative integer, got {value}")
    return value


def _parse_options(text: str, options: Options) -> Options:
    """The ``[key$eqvalue]`` run after ``rma::options``, applied over `options`."""
    if not text.startswith("["):
        raise QueryError(f"rma::options must be followed by [key$eqvalue], got {_show(text)}")
    pos = 0
    while pos < len(text):
        if text[pos] != "[":
            raise QueryError(f"unexpected {_show(text[pos:])} in rma::options")
        end = _find_close(text, pos)
        content = text[pos + 1 : end]
        pos = end + 1
        m = _FILTER.match(content)
        if m is None or not m.group(2).lower().startswith("eq"):
            raise QueryError(f"malformed option {_show(f'[{content}]')}: expected [key$eqvalue]")
        key, raw = m.group(1), m.group(2)[2:] + m.group(3)
        if key == "start_row":
            options = replace(options, start_row=_non_negative(key, raw))
        elif key == "num_rows":
            if _option_text(raw).lower() == "all":
                options = replace(options, num_rows=None)
            else:
                options = replace(options, num_rows=_non_negative(key, raw))
        elif key == "order":
            options = replace(options, order=_parse_order(_option_text(raw)))
        elif key == "tabular":
            options = replace(options, tabular=_parse_columns(_option_text(raw)))
        elif key == "count":
            # AllenSDK's clients never need the count switched off; accepted and ignored.
            if _option_text(raw).lower() not in ("true", "false"):
                raise QueryError(f"count must be true or false, got {_show(_option_text(raw))}")
        else:
            raise QueryError(f"unknown option {_show(key)}")
    return options


def parse_query(q: str) -> Query:
    """Parse a decoded RMA query (with or without a leading ``q=``) into a :class:`Query`."""
    if not isinstance(q, str):
        raise QueryError("the query must be text")
    if len(q) > _MAX_QUERY_CHARS:
        raise QueryError(f"the query is longer than {_MAX_QUERY_CHARS} characters")
    text = q.strip()
    if text.startswith("q="):
        text = text[2:].strip()
    if not text:
        raise QueryError("empty query: expected criteria=model::<Model>")
    clauses = [c.strip() for c in _split_top(text)]
    m = _MODEL_CLAUSE.match(clauses[0])
    if m is None:
        raise QueryError(
            f"the query must start with criteria=model::<Model>, got {_show(clauses[0])}"
        )
    model = m.group(1)
    if model not in MODELS:
        raise QueryError(f"unknown model {_show(model)}")
    filters, pos = _parse_filters(clauses[0], m.end())
    if pos != len(clauses[0]):
        raise QueryError(f"unexpected {_show(clauses[0][pos:])} after model::{model}")
    criteria: list[Node] = []
    includes: list[Node] = []
    root_filters = list(filters)
    options = Options()
    mode: str | None = None
    for clause in clauses[1:]:
        low = clause.lower()
        if low in ("rma::include", "rma::criteria"):
            mode = low
        elif low.startswith("rma::options"):
            options = _parse_options(clause[len("rma::options") :].strip(), options)
            mode = None
        elif not clause:
            raise QueryError("empty clause (two commas in a row?)")
        elif mode == "rma::include":
            includes.append(_parse_node(clause, model, 1))
        elif mode == "rma::criteria":
            if clause.startswith("["):
                # A bare filter in rma::criteria applies to the root model.
                more, pos = _parse_filters(clause, 0)
                if pos != len(clause):
                    raise QueryError(f"unexpected {_show(clause[pos:])} in rma::criteria")
                root_filters.extend(more)
            else:
                criteria.append(_parse_node(clause, model, 1))
        else:
            raise QueryError(
                f"unexpected clause {_show(clause)}: "
                "expected rma::include, rma::criteria or rma::options"
            )
    return Query(model, tuple(root_filters), tuple(criteria), tuple(includes), options)


# --------------------------------------------------------------------------------------------
# Filters as predicates
# --------------------------------------------------------------------------------------------


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return _number(value.strip())
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _glob(pattern: str, text: str) -> bool:
    """Case-insensitive match with ``*`` wildcards, in linear passes (no regex backtracking)."""
    parts = pattern.casefold().split("*")
    text = text.casefold()
    if len(parts) == 1:
        return text == parts[0]
    first, last, middle = parts[0], parts[-1], parts[1:-1]
    if not text.startswith(first) or len(text) < len(first) + len(last):
        return False
    pos, stop = len(first), len(text) - len(last)
    for part in middle:
        found = text.find(part, pos, stop)
        if found < 0:
            return False
        pos = found + len(part)
    return text.endswith(last)


_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = MappingProxyType(
    {
        "lt": lambda a, b: bool(a < b),
        "le": lambda a, b: bool(a <= b),
        "gt": lambda a, b: bool(a > b),
        "ge": lambda a, b: bool(a >= b),
    }
)


def _membership(field: str, literals: Sequence[Value]) -> Predicate:
    """`field` equals one of `literals`, compared by the record value's type."""
    values = [lit.value for lit in literals]
    numbers = {n for v in values if (n := _as_number(v)) is not None}
    bools = {b for v in values if (b := _as_bool(v)) is not None}
    # Text fields compare with the value as written, and with its typed reading ("TRUE", "true").
    texts = {lit.text for lit, v in zip(literals, values, strict=True) if v is not None}
    texts |= {_as_text(v) for v in values if v is not None}
    has_null = any(v is None for v in values)

    def pred(record: Record) -> bool:
        x = record.get(field)
        if x is None:
            return has_null
        if isinstance(x, bool):
            return x in bools
        if isinstance(x, (int, float)):
            return x in numbers
        return _as_text(x) in texts

    return pred


def _predicate(f: Filter) -> Predicate:
    """The filter as a function of a record (SQL-like: null matches only ``null``)."""
    field = f.field
    if f.op in ("eq", "in"):
        return _membership(field, f.values)
    lit = f.values[0]
    if f.op == "ne":
        if lit.value is None:
            return lambda r: r.get(field) is not None
        eq = _membership(field, f.values)
        return lambda r: r.get(field) is not None and not eq(r)
    if f.op == "il":
        pattern = lit.text

        def like(record: Record) -> bool:
            x = record.get(field)
            return x is not None and _glob(pattern, _as_text(x))

        return like
    compare = _COMPARE[f.op]
    target = lit.value
    number, flag, text = _as_number(target), _as_bool(target), lit.text

    def ordered(record: Record) -> bool:
        x = record.get(field)
        if x is None or target is None:
            return False
        if isinstance(x, bool):
            return flag is not None and compare(x, flag)
        if isinstance(x, (int, float)):
            return number is not None and compare(x, number)
        return compare(_as_text(x), text)

    return ordered


def _all_of(preds: Sequence[Predicate]) -> Predicate:
    if not preds:
        return lambda r: True
    if len(preds) == 1:
        return preds[0]
    return lambda r: all(p(r) for p in preds)


# --------------------------------------------------------------------------------------------
# Tables and their indexes, cached by the identity of the records list
# --------------------------------------------------------------------------------------------


class _Table:
    """One model's records and the indexes built over them on demand."""

    def __init__(self, rows: Sequence[Record]) -> None:
        self.rows = rows
        self.length = len(rows)
        self._lock = threading.Lock()
        self._by_id: dict[Any, Record] | None = None
        self._fields: frozenset[str] | None = None
        self._groups: dict[tuple[str, str | None, str | None], dict[Any, list[Record]]] = {}

    def by_id(self) -> dict[Any, Record]:
        with self._lock:
            if self._by_id is None:
                self._by_id = {r.get("id"): r for r in self.rows}
            return self._by_id

    def fields(self) -> frozenset[str]:
        """Every key any record carries."""
        with self._lock:
            if self._fields is None:
                keys: set[str] = set()
                for r in self.rows:
                    keys.update(r.keys())
                self._fields = frozenset(keys)
            return self._fields

    def group(
        self, key: str, type_field: str | None, type_value: str | None
    ) -> dict[Any, list[Record]]:
        """Records by their `key` value (only those whose `type_field` is `type_value`)."""
        with self._lock:
            groups = self._groups.get((key, type_field, type_value))
            if groups is None:
                groups = {}
                for r in self.rows:
                    if type_field is not None and r.get(type_field) != type_value:
                        continue
                    groups.setdefault(r.get(key), []).append(r)
                for members in groups.values():
                    members.sort(key=lambda r: _sort_key(r.get("id")))
                self._groups[(key, type_field, type_value)] = groups
            return groups


_TABLE_CACHE_SIZE: Final = 64
_RESULT_CACHE_SIZE: Final = 8
_cache_lock = threading.Lock()
_tables: OrderedDict[int, _Table] = OrderedDict()
_Deps = tuple[tuple[str, Sequence[Record], int], ...]
_results: OrderedDict[tuple[Any, ...], tuple[_Deps, list[Record]]] = OrderedDict()
_EMPTY: Final[tuple[Record, ...]] = ()


def _rows(records: Records, model: str) -> Sequence[Record]:
    try:
        return records(model)
    except KeyError:
        return _EMPTY


def _table(rows: Sequence[Record]) -> _Table:
    """The cached :class:`_Table` of this very list (the cache holds it, so ids are not reused)."""
    with _cache_lock:
        table = _tables.get(id(rows))
        # The length check catches a list that grew in place since its indexes were built.
        if table is not None and table.rows is rows and table.length == len(rows):
            _tables.move_to_end(id(rows))
            return table
        table = _Table(rows)
        _tables[id(rows)] = table
        while len(_tables) > _TABLE_CACHE_SIZE:
            _tables.popitem(last=False)
        return table


class _Context:
    """The tables one execution touches, loaded once each."""

    def __init__(self, records: Records) -> None:
        self._records = records
        self._tables: dict[str, _Table] = {}
        self._preds: dict[int, Predicate] = {}

    def table(self, model: str) -> _Table:
        table = self._tables.get(model)
        if table is None:
            table = self._tables[model] = _table(_rows(self._records, model))
        return table

    def fields(self, model: str) -> frozenset[str]:
        return self.table(model).fields() | frozenset(MODELS[model].fields)

    def node_predicate(self, node: Node) -> Predicate:
        """The conjunction of an include node's filters, compiled once per execution."""
        pred = self._preds.get(id(node))
        if pred is None:
            pred = self._preds[id(node)] = _all_of([_predicate(f) for f in node.filters])
        return pred


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class _Resolved:
    """A criteria node with each filter moved to the level that has its field."""

    model: str
    assoc: Association | None
    filters: list[Filter]
    children: list[_Resolved]


def _resolve_criteria(
    ctx: _Context, node: Node, parent: _Resolved, chain: list[_Resolved]
) -> _Resolved:
    assoc = MODELS[parent.model].association(node.name)
    assert assoc is not None  # checked by the parser
    here = _Resolved(assoc.target, assoc, [], [])
    levels = [here, *reversed(chain)]
    for f in node.filters:
        # Like an unqualified SQL column: the nearest level that has the field owns the filter.
        owner = next((lv for lv in levels if f.field in ctx.fields(lv.model)), None)
        if owner is None:
            raise QueryError(
                f"unknown field {_show(f.field)} in rma::criteria {_show(node.name)}: "
                f"not a field of {assoc.target} nor of the models above it"
            )
        owner.filters.append(f)
    for child in node.children:
        here.children.append(_resolve_criteria(ctx, child, here, [*chain, here]))
    return here


def _link(assoc: Association, satisfying: Sequence[Record]) -> tuple[str, set[Any]]:
    """The parent field and the values it must hold for some satisfying target to be linked."""
    if assoc.kind is AssociationKind.BELONGS_TO:
        keys = {r.get("id") for r in satisfying}
        keys.discard(None)
        return assoc.key, keys
    keys = {
        r.get(assoc.key)
        for r in satisfying
        if assoc.type_field is None or r.get(assoc.type_field) == assoc.type_value
    }
    keys.discard(None)
    return "id", keys


def _links_predicate(ctx: _Context, node: _Resolved) -> Predicate:
    """Whether a record of `node.model` passes the node's filters and reaches every child."""
    preds = [_predicate(f) for f in node.filters]
    for child in node.children:
        assert child.assoc is not None
        child_pred = _links_predicate(ctx, child)
        satisfying = [r for r in ctx.table(child.model).rows if child_pred(r)]
        field, keys = _link(child.assoc, satisfying)
        preds.append(_holds_one_of(field, keys))
    return _all_of(preds)


def _holds_one_of(field: str, keys: set[Any]) -> Predicate:
    return lambda r: r.get(field) in keys


def _sort_key(value: Any) -> tuple[int, int, Any]:
    """Orders mixed values without raising: nulls last, numbers before text."""
    if value is None:
        return (1, 0, 0)
    if isinstance(value, (int, float)):
        return (0, 0, value)
    if isinstance(value, str):
        return (0, 1, value)
    return (0, 2, repr(value))


def _check_fields(ctx: _Context, model: str, fields: Sequence[str], where: str) -> None:
    known = ctx.fields(model)
    for field in fields:
        if field not in known:
            raise QueryError(f"unknown field {_show(field)} of {model} in {where}")


def _order_fields(query: Query) -> list[OrderKey]:
    table = MODELS[query.model].table
    keys: list[OrderKey] = []
    for key in query.options.order:
        prefix, _, field = key.field.rpartition(".")
        if prefix and prefix != table:
            raise QueryError(
                f"order by {_show(key.field)}: only fields of {table} can order the result"
            )
        keys.append(OrderKey(field, key.descending))
    return keys


def _resolve(ctx: _Context, query: Query) -> _Resolved:
    """The root filters and criteria trees, each filter placed on the level owning its field."""
    _check_fields(ctx, query.model, [f.field for f in query.filters], f"model::{query.model}")
    root = _Resolved(query.model, None, list(query.filters), [])
    for node in query.criteria:
        root.children.append(_resolve_criteria(ctx, node, root, [root]))
    return root


def _matching(ctx: _Context, root: _Resolved, order: Sequence[OrderKey]) -> list[Record]:
    """The root records that pass the filters and criteria, in the requested order."""
    pred = _links_predicate(ctx, root)
    rows = [r for r in ctx.table(root.model).rows if pred(r)]
    if [(k.field, k.descending) for k in order] != [("id", False)]:
        rows.sort(key=_by_field("id"))
    # Stable sorts, least significant key first, so ties fall back to ascending id.
    for key in reversed(order):
        rows.sort(key=_by_field(key.field), reverse=key.descending)
    return rows


def _by_field(field: str) -> Callable[[Record], tuple[int, int, Any]]:
    return lambda r: _sort_key(r.get(field))


def _cached_matching(
    ctx: _Context, records: Records, query: Query, root: _Resolved, order: Sequence[OrderKey]
) -> list[Record]:
    key = (query.model, query.filters, query.criteria, tuple(order))
    with _cache_lock:
        hit = _results.get(key)
    # The cached answer stands only while every table it was computed from is the same list.
    if hit is not None and all(
        (seq := _rows(records, m)) is rows and len(seq) == n for m, rows, n in hit[0]
    ):
        with _cache_lock:
            if key in _results:
                _results.move_to_end(key)
        return hit[1]
    models = {query.model} | _tree_models(query.model, query.criteria)
    deps = tuple((m, ctx.table(m).rows, ctx.table(m).length) for m in sorted(models))
    rows = _matching(ctx, root, order)
    with _cache_lock:
        _results[key] = (deps, rows)
        while len(_results) > _RESULT_CACHE_SIZE:
            _results.popitem(last=False)
    return rows


def _tree_models(model: str, nodes: Sequence[Node]) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        assoc = MODELS[model].association(node.name)
        assert assoc is not None
        found.add(assoc.target)
        found |= _tree_models(assoc.target, node.children)
    return found


def _check_includes(ctx: _Context, model: str, nodes: Sequence[Node]) -> None:
    for node in nodes:
        assoc = MODELS[model].association(node.name)
        assert assoc is not None
        where = f"rma::include {_show(node.name)}"
        _check_fields(ctx, assoc.target, [f.field for f in node.filters], where)
        _check_includes(ctx, assoc.target, node.children)


def _related(
    ctx: _Context, record: Record, assoc: Association, node: Node
) -> Record | list[Record] | None:
    """The records `assoc` links to `record`, filtered by `node`'s filters."""
    pred = ctx.node_predicate(node)
    table = ctx.table(assoc.target)
    if assoc.kind is AssociationKind.BELONGS_TO:
        target = table.by_id().get(record.get(assoc.key))
        return target if target is not None and pred(target) else None
    members = table.group(assoc.key, assoc.type_field, assoc.type_value).get(record.get("id"), [])
    return [r for r in members if pred(r)]


def _nest(ctx: _Context, record: Record, model: str, nodes: Sequence[Node]) -> dict[str, Any]:
    """`record` with its included associations nested, keys in alphabetical order."""
    out = dict(record)
    for node in nodes:
        assoc = MODELS[model].association(node.name)
        assert assoc is not None
        linked = _related(ctx, record, assoc, node)
        if isinstance(linked, list):
            out[node.name] = [_nest(ctx, r, assoc.target, node.children) for r in linked]
        elif linked is None:
            out[node.name] = None
        else:
            out[node.name] = _nest(ctx, linked, assoc.target, node.children)
    return {k: out[k] for k in sorted(out)}


_Path = list[tuple[Association, Node]]


def _include_path(model: str, nodes: Sequence[Node], table: str) -> _Path | None:
    """The shortest include path from `model` to a model whose table is `table`."""
    frontier: list[tuple[str, Sequence[Node], _Path]] = [(model, nodes, [])]
    while frontier:
        following: list[tuple[str, Sequence[Node], _Path]] = []
        for current, children, path in frontier:
            for node in children:
                assoc = MODELS[current].association(node.name)
                assert assoc is not None
                step = [*path, (assoc, node)]
                if MODELS[assoc.target].table == table:
                    return step
                following.append((assoc.target, node.children, step))
        frontier = following
    return None


def _tabular_plan(
    ctx: _Context, query: Query, columns: Sequence[Column]
) -> tuple[list[_Path], list[tuple[str, int, str]]]:
    """Each distinct join path, and per column its output name, path index and field."""
    root = MODELS[query.model]
    paths: list[_Path] = [[]]
    plan: list[tuple[str, int, str]] = []
    for col in columns:
        if col.table is None or col.table == root.table:
            _check_fields(ctx, root.name, [col.field], "tabular")
            plan.append((col.name, 0, col.field))
            continue
        if col.table not in _TABLE_TO_MODEL:
            raise QueryError(f"unknown table {_show(col.table)} in tabular")
        path = _include_path(root.name, query.includes, col.table)
        if path is None:
            raise QueryError(
                f"tabular column {col.table}.{col.field}: {col.table} is not reached "
                "through rma::include"
            )
        if any(assoc.kind is not AssociationKind.BELONGS_TO for assoc, _ in path):
            raise QueryError(
                f"tabular column {col.table}.{col.field}: "
                "only belongs-to associations can be joined"
            )
        _check_fields(ctx, path[-1][0].target, [col.field], "tabular")
        if path not in paths:
            paths.append(path)
        plan.append((col.name, paths.index(path), col.field))
    return paths, plan


def _tabular_value(value: Any, as_strings: bool) -> Any:
    if not as_strings or value is None:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tabulate(
    ctx: _Context, query: Query, page: Sequence[Record], columns: Sequence[Column], as_strings: bool
) -> list[dict[str, Any]]:
    paths, plan = _tabular_plan(ctx, query, columns)
    out: list[dict[str, Any]] = []
    for record in page:
        ends: list[Record | None] = []
        for path in paths:
            current: Record | None = record
            for assoc, node in path:
                if current is None:
                    break
                linked = _related(ctx, current, assoc, node)
                current = linked if not isinstance(linked, list) else None
            ends.append(current)
        row: dict[str, Any] = {}
        for name, index, field in plan:
            end = ends[index]
            row[name] = _tabular_value(end.get(field) if end is not None else None, as_strings)
        out.append(row)
    return out


def execute(
    q: str, records: Records, *, page_cap: int = 50_000, tabular_strings: bool = False
) -> dict[str, Any]:
    """Evaluate `q` over `records` and return the success envelope.

    Keys in this order: success (True), id (0), start_row, num_rows, total_rows, msg (the
    page of records). A page holds at most `page_cap` records; with `tabular_strings` every
    non-null tabular value is sent as a string, as the live server sometimes does.
    """
    if page_cap < 1:
        raise ValueError(f"page_cap must be positive, got {page_cap}")
    query = parse_query(q)
    ctx = _Context(records)
    # Check every name against the data before any work, so errors do not depend on the cache.
    root = _resolve(ctx, query)
    order = _order_fields(query)
    _check_fields(ctx, query.model, [k.field for k in order], "order")
    _check_includes(ctx, query.model, query.includes)
    columns = query.options.tabular
    if columns is not None:
        _tabular_plan(ctx, query, columns)
    rows = _cached_matching(ctx, records, query, root, order)
    opts = query.options
    size = page_cap if opts.num_rows is None else min(opts.num_rows, page_cap)
    page = rows[opts.start_row : opts.start_row + size]
    if columns is not None:
        msg: list[dict[str, Any]] = _tabulate(ctx, query, page, columns, tabular_strings)
    else:
        msg = [_nest(ctx, r, query.model, query.includes) for r in page]
    return {
        "success": True,
        "id": 0,
        "start_row": opts.start_row,
        "num_rows": len(msg),
        "total_rows": len(rows),
        "msg": msg,
    }


def error_envelope(message: str) -> dict[str, Any]:
    """The envelope of a failed query: ``success`` false and the reason as ``msg``."""
    return {
        "success": False,
        "id": 0,
        "start_row": 0,
        "num_rows": 0,
        "total_rows": 0,
        "msg": message,
    }
