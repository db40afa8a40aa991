"""A one-shot read searches the vmlinux part instead of parsing it whole: it must give the full parse's answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.sources.kallsyms import parse_kallsyms

NAMES = ["foo", "bar", "foo.isra.0", "b", "__start_x", "d", "t"]
# Names only asked about: the kernel's "%511[^,]" lets a .klp.sym name carry blanks, which no line's name has.
ASKED_ONLY = ["absent", "t foo", "foo\n", "T b", "b\tfoo"]
ODD = [  # {a}: an address of the width the other lines have
    "zzzz t foo",  # spaced right, address not hex
    "{a} tt foo",  # a two-letter type
    "{a} t foo extra",  # a fourth field
    "{a}  foo",  # an empty type
    "{a} t ",  # an empty name
    "{a}\tt foo",  # a tab
    "{a} t fo\to",  # a tab inside what would be the name
    "{a} t foo ",  # a trailing blank
    "{a}0 t foo",  # another address width: a valid line the fast parse leaves to the careful one
    "not a kallsyms line",
    "",  # an empty line
]


# Odd lines whose separators are s_show()'s: skipped by both parses, counted as malformed only by the full one.
SPACED_RIGHT = {"zzzz t foo", "{a} tt foo", "{a}  foo", "{a} t "}


def _line(address: int, kind: str, name: str, width: int) -> str:
    return f"{address:0{width}x} {kind} {name}\n"


@st.composite
def kallsyms_texts(draw: st.DrawFn) -> tuple[str, bool]:
    """A vmlinux part (and maybe a module line), and whether an odd line of SPACED_RIGHT is in it."""
    width = draw(st.sampled_from([8, 16]))
    hidden = draw(st.booleans())
    rows = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from("tTdDbBrRA"),
                                   st.sampled_from([0, 0x1000, 0xC1000000])), min_size=1, max_size=60))  # fmt: skip
    lines = [_line(0 if hidden else a, kind, name, width) for name, kind, a in rows]
    spaced_right = False
    for _ in range(draw(st.integers(0, 2))):
        odd = draw(st.sampled_from(ODD))
        spaced_right |= odd in SPACED_RIGHT
        lines.insert(draw(st.integers(0, len(lines))), odd + "\n")
    if draw(st.booleans()):
        lines.append(f"{0:0{width}x} t foo\t[mod]\n")
    return "".join(lines).replace("{a}", f"{0x1000:0{width}x}"), spaced_right


@settings(max_examples=500, deadline=None)
@given(text=kallsyms_texts(), asked=st.lists(st.sampled_from([*NAMES, *ASKED_ONLY]), min_size=1, max_size=30))
def test_a_one_shot_read_answers_as_the_full_parse(text: tuple[str, bool], asked: list[str]) -> None:
    data = text[0].encode()
    full_read = parse_kallsyms(data, "/proc/kallsyms")
    scan_read = parse_kallsyms(data, "/proc/kallsyms", one_shot=True)
    if not text[1]:  # the one difference (scan.py's docstring)
        assert scan_read.problems == full_read.problems  # odd lines reported alike
        assert scan_read.value.malformed_lines == full_read.value.malformed_lines
    full, scan = full_read.value, scan_read.value
    assert (scan.addresses_visible, scan.kallsyms_all) == (full.addresses_visible, full.kallsyms_all)
    for name in asked:  # more than 16 names: the search gives way to the index, with the same answers
        a, b = scan.find("vmlinux", name), full.find("vmlinux", name)
        assert a.matches == b.matches, name
        if full.addresses_visible:
            assert a.zero_addresses == b.zero_addresses, name
        assert scan.occurrences("vmlinux", name) == full.occurrences("vmlinux", name), name


def test_a_badly_spaced_part_is_parsed_whole_and_its_odd_lines_reported() -> None:
    data = b"ffffffff81000000 T _text\nnot a kallsyms line\nffffffff81000010 t foo\n"
    read = parse_kallsyms(data, "/proc/kallsyms", one_shot=True)
    assert read.value.malformed_lines == 1
    assert [p.code for p in read.problems] == ["malformed_lines"]
    assert read.value.find("vmlinux", "foo").matches == 1


def test_a_one_shot_read_of_the_live_host_answers_as_the_full_parse() -> None:
    with open("/proc/kallsyms", "rb") as stream:
        data = stream.read()
    full = parse_kallsyms(data, "/proc/kallsyms").value
    scan = parse_kallsyms(data, "/proc/kallsyms", one_shot=True).value
    assert (scan.addresses_visible, scan.kallsyms_all) == (full.addresses_visible, full.kallsyms_all)
    for name in ("schedule", "_text", "__start___ex_table", "no_such_symbol_here"):
        assert scan.find("vmlinux", name) == full.find("vmlinux", name)
