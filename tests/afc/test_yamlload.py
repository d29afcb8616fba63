"""afc.yamlload: safe event-walking loader, node positions, refusals, round trip."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from afc.yamlload import MAX_DEPTH, dump_round_trip, load_yaml
from afcore.errors import ParseError
from afcore.spans import SourceFile, Span

REFERENCE = """\
# Agent File Format v1.0
version: "1.0"
name: "classification-agent"
neural_config:
  input_size: 784
  hidden_layers: [128, 64, 32]
  activation_function: "relu"
  learning_rate: 0.001

workflows:
  execution:
    - receive_input   # a comment
    - 'send_output(topic="x")'
"""


def load(text: str):
    return load_yaml(SourceFile("a.af", text))


def codes(text: str) -> list[str]:
    with pytest.raises(ParseError) as info:
        load(text)
    return [d.code for d in info.value.diagnostics]


class TestData:
    def test_matches_ruamel_safe_loader(self):
        expected = YAML(typ="safe", pure=True).load(REFERENCE)
        assert load(REFERENCE).data == expected

    @pytest.mark.parametrize(
        ("text", "value"),
        [("1", 1), ("-7", -7), ("0x1f", 31), ("0o17", 15), ("1.5", 1.5), ("1e3", 1000.0), (".inf", float("inf")),
         ("true", True), ("False", False), ("null", None), ("~", None), ("", None), ('"1"', "1"), ("'true'", "true"),
         ("abc", "abc"), ("2025-07-13T19:24:55Z", "2025-07-13T19:24:55Z")],
    )
    def test_scalars_follow_the_yaml_1_2_core_schema(self, text, value):
        assert load(f"k: {text}\n").data == {"k": value}


class TestPositions:
    def test_value_span_is_one_based(self):
        doc = load(REFERENCE)
        assert doc.span_of(("neural_config", "hidden_layers", 1)) == Span("a.af", 6, 24, 6, 26)
        assert doc.span_of(("name",)) == Span("a.af", 3, 7, 3, 29)

    def test_key_span(self):
        assert load(REFERENCE).span_of(("neural_config", "input_size"), part="key") == Span("a.af", 5, 3, 5, 13)

    def test_missing_path_falls_back_to_nearest_ancestor(self):
        doc = load(REFERENCE)
        assert doc.span_of(("neural_config", "output_size"), part="key") == doc.span_of(("neural_config",), part="key")

    def test_crlf_and_non_ascii_columns_count_characters(self):
        doc = load('a: "é€😀"\r\nb: 2\r\n')
        assert doc.span_of(("b",)) == Span("a.af", 2, 4, 2, 5)
        assert doc.span_of(("a",)).end_column == 9

    def test_sequence_items(self):
        doc = load(REFERENCE)
        assert doc.span_of(("workflows", "execution", 0)) == Span("a.af", 12, 7, 12, 20)
        assert doc.positions[("workflows", "execution", 1)].style == "'"


class TestRefused:
    def test_python_tag(self):
        assert codes("a: !!python/object/apply:os.system [echo]\n") == ["AF0052"]

    def test_local_tag(self):
        assert codes("a: !custom 1\n") == ["AF0052"]

    def test_anchor_and_alias(self):
        assert codes("a: &x 1\nb: *x\n") == ["AF0053", "AF0054"]

    def test_alias_bomb_is_refused_without_expanding(self):
        # 9**20 leaves: expanding it at all would never finish, so returning proves it was not expanded.
        lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(19)]
        found = codes("\n".join(lines) + "\n")
        assert found.count("AF0053") == 20 and found.count("AF0054") == 19 * 9

    def test_deep_nesting(self):
        text = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
        assert codes(text) == ["AF0055"]

    def test_very_deep_nesting_does_not_crash(self):
        assert codes("a: " + "[" * 100_000 + "\n")[0] in ("AF0050", "AF0055")

    def test_non_string_keys(self):
        assert codes("1: a\n") == ["AF0056"]
        assert codes("? [a]\n: b\n") == ["AF0056"]

    def test_duplicate_key_names_first_line(self):
        with pytest.raises(ParseError) as info:
            load("a: 1\nb: 2\na: 3\n")
        (diag,) = info.value.diagnostics
        assert diag.code == "AF0057" and diag.span.line == 3 and "line 1" in diag.help

    def test_two_documents(self):
        assert codes("a: 1\n---\nb: 2\n") == ["AF0058"]

    @pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n", "just text\n"])
    def test_empty_or_not_a_mapping(self, text):
        assert codes(text) == ["AF0051"]

    @pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\\x01", "\\x7f"])
    def test_control_and_bidi_characters_in_names(self, char):
        assert codes(f'name: "agent{char}x"\n') == ["AF0060"]
        assert codes(f'"key{char}": 1\n') == ["AF0060"]

    def test_bidi_in_other_values_is_allowed(self):
        assert load('description: "abc\u202edef"\n').data["description"] == "abc\u202edef"

    def test_syntax_error_position(self):
        with pytest.raises(ParseError) as info:
            load("a: [1, 2\nb: 3\n")
        (diag,) = info.value.diagnostics
        assert diag.code == "AF0050" and (diag.span.line, diag.span.column) == (2, 2)

    def test_control_character_in_stream(self):
        assert codes("a: b\x07c\n") == ["AF0050"]

    @pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\U0000d800", "\\U00110000"])
    def test_surrogate_escape_says_why(self, escape):
        # issue 9, point 6: a lone surrogate must not reach the manifest encoder; libyaml refuses it
        with pytest.raises(ParseError) as info:
            load(f'name: x\ndescription: "a {escape} b"\n')
        (diag,) = info.value.diagnostics
        assert diag.code == "AF0050" and "surrogate" in diag.help and "(D800-DFFF)" in diag.help

    def test_all_refusals_reported_in_one_run(self):
        assert codes("a: !t 1\nb: 2\nb: 3\nc: &x 4\n") == ["AF0052", "AF0057", "AF0053"]


class TestRoundTrip:
    def test_unchanged_dump_is_byte_identical(self):
        doc = load(REFERENCE)
        assert dump_round_trip(doc.round_trip()) == REFERENCE

    def test_crlf_dump(self):
        text = REFERENCE.replace("\n", "\r\n")
        doc = load(text)
        assert dump_round_trip(doc.round_trip(), newline="\r\n") == text

    def test_edit_keeps_comments_and_order(self):
        tree = load(REFERENCE).round_trip()
        tree["neural_config"]["input_size"] = 10
        out = dump_round_trip(tree)
        assert out == REFERENCE.replace("input_size: 784", "input_size: 10")


class TestAliasKeys:
    def test_alias_as_key_is_refused_as_alias(self):
        assert codes("a: &k b\n*k : 1\nc: 2\n") == ["AF0053", "AF0054"]


class TestDirectives:
    @pytest.mark.parametrize("directive", ["%YAML 1.1", "%TAG !p! tag:yaml.org,2002:python/"])
    def test_directives_are_refused(self, directive):
        assert codes(f"{directive}\n---\na: yes\n") == ["AF0059"]


class TestHugeNumbers:
    def test_integer_with_thousands_of_digits_is_a_number_not_a_crash(self):
        assert load("a: " + "9" * 5000 + "\n").data == {"a": float("inf")}
