"""Properties of identities beyond the existing cache and claim ones: what an invalidation
may evict, what the bus's wire form preserves, and what canonicalisation may merge."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jwtkeymap.core.cache import Mapped, MappingCache
from jwtkeymap.core.claims import MappingIdentity, canonicalize
from jwtkeymap.core.clock import ManualClock
from jwtkeymap.core.errors import ClaimInvalid
from jwtkeymap.core.invalidation.messages import Invalidation, apply_message, parse_message
from jwtkeymap.core.keys import KeyIdentity

KEY = KeyIdentity(token_hash="a" * 64)
# Small alphabets make near-collisions likely: separators, escapes, the empty issuer.
parts = st.text(min_size=1, max_size=5, alphabet='ab:\\."{}')
identities = st.builds(
    MappingIdentity, st.sampled_from(["", "a", "a:b", "https://x"]), parts, parts
)
any_text = st.text(min_size=1, max_size=40)


@given(st.lists(identities, min_size=1, max_size=25, unique=True), identities)
def test_invalidation_evicts_only_what_the_row_could_answer(
    cached: list[MappingIdentity], changed: MappingIdentity
) -> None:
    cache = MappingCache(max_entries=1000, positive_ttl=60, negative_ttl=60, clock=ManualClock())
    for n, ident in enumerate(cached):
        cache.put(ident, Mapped(mapping_id=str(n), scope="", key=KEY))
    apply_message(cache, Invalidation("identity", identity=changed))
    for ident in cached:
        same_claim = (ident.claim_name, ident.claim_value) == (
            changed.claim_name,
            changed.claim_value,
        )
        # A global row ("" issuer) answers every issuer; a scoped one only its own.
        affected = same_claim and changed.issuer in ("", ident.issuer)
        assert (cache.get(ident) is None) == affected, ident


@given(st.builds(MappingIdentity, any_text, any_text, any_text))
def test_the_wire_form_names_exactly_the_identity(ident: MappingIdentity) -> None:
    wire = Invalidation("identity", identity=ident).to_json()
    assert parse_message(wire) == Invalidation("identity", identity=ident)
    assert parse_message(wire.encode("utf-8", "surrogatepass")).identity == ident


@given(any_text, st.integers())
def test_an_integer_shares_an_identity_only_with_its_decimal_string(text: str, n: int) -> None:
    try:
        as_text = canonicalize(text, field="f")
    except ClaimInvalid:
        return
    assert (as_text == canonicalize(n, field="f")) == (text == str(n))


@given(any_text)
def test_casefolding_is_idempotent_and_opt_in(text: str) -> None:
    try:
        folded = canonicalize(text, field="f", casefold=True)
        plain = canonicalize(text, field="f")
    except ClaimInvalid:
        return
    assert plain == text
    assert canonicalize(folded, field="f", casefold=True) == folded
