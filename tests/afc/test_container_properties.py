"""Property tests: whatever we write, we read back the same header and identical tensors.

Both payload encodings, any section order, LF or CRLF, with or without a BOM; and writing what we
read gives the same bytes again.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from afc.reader import read_container
from afc.tensors import decode_tensors, encode_tensors
from afc.writer import write_container

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
header_lines = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30).filter(
        lambda line: not line.startswith("---BINARY_SECTION:")
    ),
    max_size=6,
)
float_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=st.floats(width=32, allow_nan=True)
)
tensor_maps = st.dictionaries(names, float_arrays, min_size=1, max_size=3)
payloads = st.one_of(tensor_maps, st.binary(max_size=300))


def bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint32)  # compare bit patterns so that NaN == NaN


@st.composite
def files(draw):
    section_names = draw(st.lists(names, unique=True, max_size=4))
    sections = [(name, draw(payloads)) for name in section_names]
    raw = set(draw(st.lists(st.sampled_from(section_names), unique=True))) if section_names else set()
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    header = "".join(line + newline for line in draw(header_lines))
    return header, sections, raw, newline, draw(st.booleans())


class TestRoundTrip:
    @settings(max_examples=60, deadline=None)
    @given(files())
    def test_write_then_read(self, spec):
        header, sections, raw, newline, bom = spec
        encoded = [(n, encode_tensors(p) if isinstance(p, dict) else p) for n, p in sections]
        data = write_container(header, encoded, raw=raw, newline=newline, bom=bom)
        container = read_container(data, path="prop.af")
        assert container.header_text == header and container.bom == bom
        assert [s.name for s in container.sections] == [n for n, _ in sections]
        for section, (name, payload) in zip(container.sections, sections):
            assert section.encoding == ("raw" if name in raw else "base64")
            if isinstance(payload, dict):
                tensors, _ = decode_tensors(section)
                assert tensors.keys() == payload.keys()
                assert all(np.array_equal(bits(tensors[k]), bits(payload[k])) for k in payload)
            else:
                assert section.payload == payload
        again = write_container(
            container.header_text,
            [(s.name, s.payload) for s in container.sections],
            raw={s.name for s in container.sections if s.encoding == "raw"},
            newline=container.newline,
            bom=container.bom,
        )
        assert again == data
