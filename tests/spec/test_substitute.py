"""``${NAME}`` substitution: types, text, escapes and the failures it reports."""

from __future__ import annotations

from reconciler.spec.substitute import (
    IN_KEY,
    MALFORMED,
    NOT_SCALAR,
    UNDEFINED,
    Prepared,
    canonical,
    fast_substitute,
    keys_with_references,
    references,
    substitute,
    substitute_text,
)

VALUES = {"port": 8080, "tag": "1.4", "debug": False, "hosts": ["a", "b"], "ratio": 0.5}


def test_a_whole_string_keeps_the_type_and_a_part_becomes_text() -> None:
    result = substitute({"a": "${port}", "b": "--port=${port}", "c": ["${hosts}"],
                         "d": "v${tag}-${debug}-${ratio}"}, VALUES)
    assert result.value == {"a": 8080, "b": "--port=8080", "c": [["a", "b"]],
                            "d": "v1.4-false-0.5"}
    assert not result.failures
    assert [(u.path, u.name, u.whole) for u in result.uses][:2] == [
        (("a",), "port", True), (("b",), "port", False)]


def test_escapes_are_literal_and_never_substituted_again() -> None:
    result = substitute(["$${HOME}", "$${port} ${tag}", "${tag}"], {"tag": "${port}", **{
        "port": 1}})
    assert result.value == ["${HOME}", "${port} ${port}", "${port}"]
    assert [u.name for u in result.uses] == ["tag", "tag"]


def test_failures_are_collected_with_their_path() -> None:
    result = substitute({"x": ["${nope}", "a ${hosts}", "${ bad }"]}, VALUES, ("spec",))
    assert [(f.path, f.name, f.kind) for f in result.failures] == [
        (("spec", "x", 0), "nope", UNDEFINED),
        (("spec", "x", 1), "hosts", NOT_SCALAR),
        (("spec", "x", 2), " bad ", MALFORMED),
    ]
    assert result.value == {"x": ["${nope}", "a ${hosts}", "${ bad }"]}


def test_references_and_keys() -> None:
    document = {"spec": {"env": {"A": "${a}", "${k}": "x"}, "l": ["$${no}", "${b}c"]}}
    assert [(u.path, u.name) for u in references(document)] == [
        (("spec", "env", "A"), "a"), (("spec", "l", 1), "b")]
    assert keys_with_references(document) == [("spec", "env", "${k}")]


CASES = [
    {"a": "${tag}", "b": "x${port}y", "c": "$${HOME}", "d": ["${hosts}"], "e": "${debug}-$${x}"},
    {"q": 'say "${tag}"', "n": "${ratio}", "u": "ä ${tag} ü", "nested": {"l": ["${port}"]}},
    {"${tag}": 1}, {"k${tag}y": {"a": 1}}, {"$${tag}": 1}, {'a\\"${tag}': 1},
    {"a": "${nope}"}, {"a": "x ${hosts}"}, {"a": "${ bad}"}, {"a": 'x\\"${tag}": 1'},
]


def test_the_fast_path_agrees_with_the_walk_or_gives_up() -> None:
    """The JSON-text substitution gives the walk's result whenever the walk has no failure,
    and gives up (None) whenever it has one: references in keys, undefined, malformed."""
    prepared = Prepared(VALUES)
    for case in CASES:
        walked = substitute(case, VALUES)
        fast = fast_substitute(case, prepared)
        if walked.failures:
            assert fast is None, case
            assert walked.failures[0].kind in (IN_KEY, UNDEFINED, NOT_SCALAR, MALFORMED)
        else:
            assert fast == walked.value, case
            # canonical in, canonical out: what the resolved record's hash is computed from
            assert substitute_text(canonical(case), prepared) == canonical(walked.value), case
