"""The CRD file is the one source of the JWTKeyMapping schema; the spec model must say the same.

``crds/jwtkeymappings.jwtkeymap.io.yaml`` is what the API server enforces. The pydantic
model in ``jwtkeymap.operator.resource`` checks the same specs for ``jwtkeymap apply``,
whose manifests no API server has seen, so it repeats the CRD's rules. These tests walk
the CRD's ``spec`` schema next to the model's JSON schema and name the first field where
a type, bound, enum, pattern, required list or default differs. The model's schema is
only read, never turned into the CRD: it uses ``$ref`` and ``anyOf``, which a structural
schema may not. CEL rules cannot be compared as text, so each has a Python reading here
that the model must agree with on generated values.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from jwtkeymap.operator.resource import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    MappingSpec,
    SpecError,
    parse_spec,
)
from jwtkeymap.operator.status import READY, Condition, Reason, set_condition
from jwtkeymap.operator.tenancy import POLICY_KIND, POLICY_PLURAL, PolicySpec

CRD = Path(__file__).resolve().parents[3] / "crds" / f"{PLURAL}.{GROUP}.yaml"

# Keywords that constrain a value. Descriptions and titles are documentation only.
KEYWORDS = (
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
)
# A field the CRD leaves without a default is simply absent; the model may read that as
# None, or as the empty value of the type when "absent" and "empty" mean the same
# (``issuer``: any trusted issuer).
ABSENT = object()
EMPTY = {"string": "", "array": [], "object": {}}

Schema = dict[str, Any]


@functools.cache
def crd_root() -> Schema:
    """The CRD's openAPIV3Schema for the served version, parsed once (copy before changing)."""
    crd = yaml.safe_load(CRD.read_text())
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (GROUP, KIND)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def crd_spec() -> Schema:
    """The CRD's schema of ``spec``."""
    root = crd_root()
    assert "spec" in root["required"]
    spec: Schema = root["properties"]["spec"]
    return spec


def model_schema() -> Schema:
    """MappingSpec's JSON schema, with the CR's field names (aliases)."""
    return MappingSpec.model_json_schema(by_alias=True, mode="validation")


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Schema]) -> Schema:
    """A model node with ``$ref`` followed and ``X | None`` read as an optional X.

    The API server drops a null from a field that is not nullable, so "may be None"
    on the model side and "may be absent" on the CRD side say the same thing.
    """
    out = dict(node)
    if "$ref" in out:
        out = {**defs[out.pop("$ref").rsplit("/", 1)[-1]], **out}
    variants = out.pop("anyOf", None)
    if variants is not None:
        kept = [v for v in variants if v != {"type": "null"}]
        if len(kept) != 1:
            raise AssertionError(f"a union the CRD cannot express: {variants}")
        out = {**_resolve(kept[0], defs), **out}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out


def _keeps_unknown_fields(crd: Schema, model: Schema) -> tuple[bool, bool]:
    # Both sides drop or refuse unknown fields unless told to keep them.
    crd_keeps = bool(crd.get("x-kubernetes-preserve-unknown-fields")) or bool(
        crd.get("additionalProperties")
    )
    model_keeps = model.get("additionalProperties") not in (None, False)
    return crd_keeps, model_keeps


def differences(crd: Schema, model: Schema, defs: Mapping[str, Schema], path: str) -> Iterator[str]:
    """Every difference between a CRD schema node and the model's, depth first."""
    model = _resolve(model, defs)
    for word in KEYWORDS:
        if crd.get(word) != model.get(word):
            yield f"{path}: {word} is {crd.get(word)!r} in the CRD, {model.get(word)!r} in the model"
    crd_default, model_default = crd.get("default", ABSENT), model.get("default", ABSENT)
    if crd_default is not ABSENT:
        if model_default != crd_default:
            yield f"{path}: default is {crd_default!r} in the CRD, {model_default!r} in the model"
    elif model_default not in (ABSENT, None, EMPTY.get(crd.get("type", ""), ABSENT)):
        yield f"{path}: default is {model_default!r} in the model, none in the CRD"
    if crd.get("type") == "object":
        crd_required = sorted(crd.get("required", []))
        model_required = sorted(model.get("required", []))
        if crd_required != model_required:
            yield f"{path}: required is {crd_required} in the CRD, {model_required} in the model"
        crd_keeps, model_keeps = _keeps_unknown_fields(crd, model)
        if crd_keeps != model_keeps:
            yield f"{path}: unknown fields kept: {crd_keeps} in the CRD, {model_keeps} in the model"
        crd_props, model_props = crd.get("properties", {}), model.get("properties", {})
        for name in crd_props.keys() - model_props.keys():
            yield f"{path}.{name}: only in the CRD"
        for name in model_props.keys() - crd_props.keys():
            yield f"{path}.{name}: only in the model"
        for name, sub in crd_props.items():
            if name in model_props:
                yield from differences(sub, model_props[name], defs, f"{path}.{name}")
    if crd.get("type") == "array" and "items" in model:
        yield from differences(crd["items"], model["items"], defs, f"{path}[]")


def spec_differences(crd: Schema, model: Schema) -> Iterator[str]:
    """Differences between the CRD's ``spec`` and a model's JSON schema."""
    return differences(crd, model, model.get("$defs", {}), "spec")


def test_the_spec_model_says_what_the_crd_says() -> None:
    first = next(spec_differences(crd_spec(), model_schema()), None)
    assert first is None, (
        f"{CRD.name} (the source) and jwtkeymap.operator.resource.MappingSpec differ: {first}"
    )


POLICY_CRD = CRD.with_name(f"{POLICY_PLURAL}.{GROUP}.yaml")


def policy_crd_spec() -> Schema:
    """The policy CRD's schema of ``spec``, for the served version."""
    crd = yaml.safe_load(POLICY_CRD.read_text())
    assert (crd["spec"]["names"]["kind"], crd["spec"]["scope"]) == (POLICY_KIND, "Cluster")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    root: Schema = version["schema"]["openAPIV3Schema"]
    assert "spec" in root["required"]
    spec: Schema = root["properties"]["spec"]
    return spec


def test_the_policy_model_says_what_its_crd_says() -> None:
    model = PolicySpec.model_json_schema(by_alias=True, mode="validation")
    first = next(spec_differences(policy_crd_spec(), model), None)
    assert first is None, (
        f"{POLICY_CRD.name} (the source) and jwtkeymap.operator.tenancy.PolicySpec differ: {first}"
    )


def test_the_policy_comparison_sees_a_difference() -> None:
    crd = copy.deepcopy(policy_crd_spec())
    crd["properties"]["issuers"]["items"]["pattern"] = "^.*$"
    model = PolicySpec.model_json_schema(by_alias=True, mode="validation")
    assert any("spec.issuers[]: pattern" in d for d in spec_differences(crd, model))


def _at(spec: Schema, dotted: str) -> Schema:
    node = spec
    for name in dotted.split("."):
        node = node["properties"][name]
    return node


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda s: _at(s, "claim.value").update(maxLength=1023), "spec.claim.value: maxLength"),
        (lambda s: _at(s, "claim.name").update(minLength=2), "spec.claim.name: minLength"),
        (lambda s: _at(s, "key.secretRef.key").update(pattern="^k$"), "secretRef.key: pattern"),
        (lambda s: _at(s, "deletionPolicy").update(enum=["Delete"]), "spec.deletionPolicy: enum"),
        (lambda s: _at(s, "active").update(default=False), "spec.active: default"),
        (lambda s: _at(s, "issuer").update(default="x"), "spec.issuer: default"),
        (lambda s: _at(s, "issuer").update(type="integer"), "spec.issuer: type"),
        (lambda s: _at(s, "key.hash").update(format="byte"), "spec.key.hash: format"),
        (lambda s: _at(s, "claim").update(required=["name"]), "spec.claim: required"),
        (lambda s: _at(s, "key").update(required=["hash"]), "spec.key: required"),
        (lambda s: s["properties"].pop("description"), "spec.description: only in the model"),
        (lambda s: s["properties"].update(extra={"type": "string"}), "spec.extra: only in the CRD"),
        (
            lambda s: _at(s, "key").update({"x-kubernetes-preserve-unknown-fields": True}),
            "spec.key: unknown fields kept",
        ),
    ],
)
def test_a_difference_is_named(change: Callable[[Schema], object], named: str) -> None:
    # The comparison above is only worth something if it fails on a real difference.
    crd = copy.deepcopy(crd_spec())
    change(crd)
    found = list(spec_differences(crd, model_schema()))
    assert any(named in difference for difference in found), found


# --- types: the API server coerces nothing, so neither may the model ---------------------------

HASH = "a" * 64
BY_HASH: Schema = {"issuer": "*", "claim": {"name": "email", "value": "a@x"}, "key": {"hash": HASH}}
BY_SECRET: Schema = {
    "issuer": "https://idp.example.com",
    "claim": {"name": "email", "value": "a@x"},
    "key": {"secretRef": {"name": "s", "key": "k"}},
}
WRONG_TYPES: dict[str, list[Any]] = {
    "string": [7, 1.5, True, ["x"], {"x": "y"}],
    "boolean": ["true", "false", "yes", 1, 0],
    "object": ["x", 7, True, ["x"]],
}


def accepts(spec: Schema) -> bool:
    """Whether the model accepts a spec."""
    try:
        parse_spec(spec)
    except SpecError:
        return False
    return True


def leaves(node: Schema, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every field below ``spec`` with its CRD type."""
    for name, sub in node.get("properties", {}).items():
        yield (*path, name), sub["type"]
        yield from leaves(sub, (*path, name))


def with_value(path: tuple[str, ...], value: object) -> Schema:
    """A valid spec (by hash or by Secret, whichever holds ``path``) with ``value`` at ``path``."""
    spec = copy.deepcopy(BY_SECRET if "secretRef" in path else BY_HASH)
    node = spec
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    return spec


FIELDS = list(leaves(crd_spec()))


def test_the_probes_start_from_valid_specs() -> None:
    assert accepts(BY_HASH) and accepts(BY_SECRET)
    assert {kind for _, kind in FIELDS} <= WRONG_TYPES.keys(), "add wrong values for a new type"


@pytest.mark.parametrize(("path", "kind"), FIELDS, ids=[".".join(p) for p, _ in FIELDS])
def test_a_value_of_another_type_is_refused(path: tuple[str, ...], kind: str) -> None:
    for value in WRONG_TYPES[kind]:
        assert not accepts(with_value(path, value)), (path, value)


def _without(path: tuple[str, ...]) -> Schema:
    spec = with_value(path, None)
    node = spec
    for name in path[:-1]:
        node = node[name]
    del node[path[-1]]
    return spec


@pytest.mark.parametrize(("path", "kind"), FIELDS, ids=[".".join(p) for p, _ in FIELDS])
def test_a_null_is_an_absent_field(path: tuple[str, ...], kind: str) -> None:
    # The API server prunes a null from a field that is not nullable, then defaults it.
    if accepts(_without(path)):
        assert parse_spec(with_value(path, None)) == parse_spec(_without(path))
    else:
        assert not accepts(with_value(path, None))


# --- CEL rules: one Python reading each -------------------------------------------------------

CEL: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("", "has(self.issuer)"): lambda spec: "issuer" in spec,
    (
        "claim.name",
        "!self.startsWith('.') && !self.endsWith('.') && !self.contains('..')",
    ): lambda name: not name.startswith(".") and not name.endswith(".") and ".." not in name,
    # RE2's `$` is the end of the text, like fullmatch (Python's `$` also matches before "\n").
    ("key.hash", "self.matches('^[0-9a-f]{64}$')"): lambda h: (
        re.fullmatch("[0-9a-f]{64}", h) is not None
    ),
    ("key", "has(self.secretRef) != has(self.hash)"): lambda key: (
        ("secretRef" in key) != ("hash" in key)
    ),
}


def cel_rules(node: Schema, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Every (field, rule) of the CRD's x-kubernetes-validations below ``spec``."""
    for rule in node.get("x-kubernetes-validations", []):
        yield ".".join(path), rule["rule"]
    for name, sub in node.get("properties", {}).items():
        yield from cel_rules(sub, (*path, name))


def test_every_cel_rule_has_a_python_reading() -> None:
    assert set(cel_rules(crd_spec())) == set(CEL), "mirror the new CEL rule in resource.py and here"


@pytest.mark.parametrize("issuer", [None, "*", "https://idp.example.com"])
def test_issuer_required_rule(issuer: str | None) -> None:
    spec = _without(("issuer",)) if issuer is None else with_value(("issuer",), issuer)
    assert accepts(spec) == CEL["", "has(self.issuer)"](spec), spec


def _agrees(field: str, value: Any) -> None:
    (rule,) = [r for f, r in CEL if f == field]
    spec = with_value(tuple(field.split(".")), value)
    assert accepts(spec) == CEL[field, rule](value), (field, value)


@given(st.text(alphabet="a.\\", min_size=1, max_size=8))
@example("a\\.")  # an escaped dot at the end: still a trailing "." for the API server
@example("a\\..b")
@example("\\.a")
@example("a\\.b")
def test_claim_name_rule(name: str) -> None:
    _agrees("claim.name", name)


@given(
    st.one_of(
        st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
        st.text(alphabet="0aAf\n-", min_size=60, max_size=64),
    )
)
@example("a" * 63 + "\n")
def test_key_hash_rule(value: str) -> None:
    _agrees("key.hash", value)


@pytest.mark.parametrize(
    "key",
    [
        {},
        {"hash": HASH},
        {"secretRef": {"name": "s", "key": "k"}},
        {**BY_SECRET["key"], "hash": HASH},
    ],
)
def test_exactly_one_key_source_rule(key: Schema) -> None:
    _agrees("key", key)


# --- status: written by the operator, so operator/status.py keeps to the CRD's limits ---------


def condition_schema() -> Schema:
    """The CRD's schema of one ``status.conditions`` entry."""
    conditions: Schema = crd_root()["properties"]["status"]["properties"]["conditions"]
    return conditions


def test_condition_messages_are_cut_at_the_crd_limit() -> None:
    limit = condition_schema()["items"]["properties"]["message"]["maxLength"]
    long = Condition(READY, False, Reason.INVALID_SPEC, "x" * (limit + 10))
    (entry,) = set_condition(None, long, generation=1)
    assert len(entry["message"]) == limit


def test_condition_types_and_reasons_fit_the_crd() -> None:
    item = condition_schema()["items"]["properties"]
    assert re.fullmatch(item["type"]["pattern"], READY)
    assert len(READY) <= item["type"]["maxLength"]
    for reason in Reason:
        assert re.fullmatch(item["reason"]["pattern"], reason), reason
        assert len(reason) <= item["reason"]["maxLength"]


@given(st.text(alphabet="Aa0_,:\n -", min_size=0, max_size=6))
@example("Synced\n")
def test_condition_reasons_are_refused_as_the_crd_refuses_them(reason: str) -> None:
    pattern = condition_schema()["items"]["properties"]["reason"]["pattern"]
    crd_accepts = re.fullmatch(pattern, reason) is not None
    try:
        Condition(READY, True, reason, "")
    except ValueError:
        accepted = False
    else:
        accepted = True
    assert accepted == crd_accepts, reason
