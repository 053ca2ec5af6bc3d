"""The desktop bridge's RFB client-message splitter and watch-only filter (pure, no I/O).

The policy table below is written out independently of web/rfb.py on purpose: a change
to what a watch-only guest may send must change this table too.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web import rfb

# kind -> (one valid message, forwarded for a watch-only guest?)
SAMPLES: dict[str, tuple[bytes, bool]] = {
    "SetPixelFormat": (bytes([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0,
                              0, 0, 0]), True),
    "SetEncodings": (struct.pack(">BxHiii", 2, 3, 0, -223, -258), True),
    "FramebufferUpdateRequest": (struct.pack(">BBHHHH", 3, 1, 0, 0, 1280, 800), True),
    "KeyEvent": (struct.pack(">BBxxI", 4, 1, 0x78), False),
    "PointerEvent": (struct.pack(">BBHH", 5, 4, 300, 300), False),
    "ClientCutText": (struct.pack(">BxxxI", 6, 5) + b"hello", False),
    "ClientCutText extended": (struct.pack(">Bxxxi", 6, -8) + b"\x10\x00\x00\x01abcd",
                               False),
    "EnableContinuousUpdates": (struct.pack(">BBHHHH", 150, 1, 0, 0, 1280, 800), True),
    "ClientFence": (struct.pack(">BxxxIB", 248, 0x80000001, 4) + b"ping", True),
    "XVP shutdown": (struct.pack(">BxBB", 250, 1, 2), False),
    "SetDesktopSize": (struct.pack(">BxHHBx", 251, 1024, 768, 1)
                       + struct.pack(">IHHHHI", 0, 0, 0, 1024, 768, 0), False),
    "QEMU extended key": (struct.pack(">BBHII", 255, 0, 1, 0x78, 45), False),
    "QEMU audio enable": (struct.pack(">BBH", 255, 1, 0), False),
    "QEMU audio disable": (struct.pack(">BBH", 255, 1, 1), False),
    "QEMU audio format": (struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100), False),
}

UNKNOWN = [1, 7, 8, 100, 127, 149, 151, 247, 249, 252, 253, 254]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("can_input", [True, False])
def test_each_message_type_is_forwarded_as_the_policy_says(name: str, can_input: bool
                                                           ) -> None:
    data, guest_ok = SAMPLES[name]
    out, used = rfb.relay(rfb.ClientStream(1024), data, can_input)
    expected = can_input or guest_ok
    assert out == (data if expected else b"")
    assert used == (can_input and not guest_ok)  # input marks the instance as in use


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("can_input", [True, False])
def test_messages_split_byte_by_byte_arrive_whole(name: str, can_input: bool) -> None:
    data, guest_ok = SAMPLES[name]
    stream = rfb.ClientStream(1024)
    pieces = [rfb.relay(stream, data[i:i + 1], can_input)[0] for i in range(len(data))]
    assert all(p == b"" for p in pieces[:-1])
    assert pieces[-1] == (data if can_input or guest_ok else b"")
    assert stream.buffered == 0


@pytest.mark.parametrize("kind", UNKNOWN)
@pytest.mark.parametrize("can_input", [True, False])
def test_unknown_types_end_the_stream(kind: int, can_input: bool) -> None:
    stream = rfb.ClientStream(1024)
    key = SAMPLES["KeyEvent"][0]
    with pytest.raises(rfb.ProtocolError, match="unsupported"):
        rfb.relay(stream, key + bytes([kind]) + b"\x00" * 40, can_input)


@pytest.mark.parametrize("data, words", [
    (struct.pack(">BBH", 255, 7, 0), "QEMU client message 7"),
    (struct.pack(">BBH", 255, 1, 9), "QEMU audio operation 9"),
    (struct.pack(">BxxxIB", 248, 0, 65) + b"x" * 65, "fence payload of 65 bytes"),
])
def test_impossible_lengths_end_the_stream(data: bytes, words: str) -> None:
    with pytest.raises(rfb.ProtocolError, match=words):
        rfb.relay(rfb.ClientStream(1024), data, True)


def test_the_full_fence_payload_passes() -> None:
    fence = struct.pack(">BxxxIB", 248, 0, 64) + b"f" * 64
    assert rfb.relay(rfb.ClientStream(1024), fence, False)[0] == fence


@pytest.mark.parametrize("sign", [1, -1], ids=["plain", "extended"])
def test_clipboard_over_the_cap_is_dropped_unbuffered_even_for_owners(sign: int) -> None:
    cap = 1024 * 1024
    stream = rfb.ClientStream(cap)
    size = 3 * cap
    key = SAMPLES["KeyEvent"][0]
    head = struct.pack(">Bxxxi", 6, sign * size)
    piece = b"z" * 65536
    out, _ = rfb.relay(stream, head + piece[:100], True)
    assert out == b"" and stream.buffered == 0
    sent = 100
    while sent + len(piece) < size:
        assert rfb.relay(stream, piece, True)[0] == b""
        assert stream.buffered == 0
        sent += len(piece)
    # The rest of the text and the next message in one frame: the key event goes through.
    out, used = rfb.relay(stream, b"z" * (size - sent) + key, True)
    assert out == key and used


def test_clipboard_at_the_cap_reaches_the_desktop_of_an_owner() -> None:
    text = b"t" * 4096
    msg = struct.pack(">BxxxI", 6, len(text)) + text
    assert rfb.relay(rfb.ClientStream(4096), msg, True)[0] == msg
    assert rfb.relay(rfb.ClientStream(4095), msg, True)[0] == b""


def test_guest_clipboard_is_never_held() -> None:
    """A 2 GiB paste announced by a guest: nothing accumulates while it streams by."""
    stream = rfb.ClientStream(1024 * 1024)
    out, _ = rfb.relay(stream, struct.pack(">Bxxxi", 6, -(2**31)), False)
    assert out == b""
    piece = b"\x00" * 65536
    for _ in range(1024):  # 64 MiB of it
        assert rfb.relay(stream, piece, False) == (b"", False)
        assert stream.buffered == 0
    small = struct.pack(">BxxxI", 6, 5) + b"hello"
    fresh = rfb.ClientStream(1024 * 1024)
    assert rfb.relay(fresh, small[:9], False)[0] == b"" and fresh.buffered == 0


def test_a_guest_demoted_mid_paste_sends_none_of_it() -> None:
    """The clipboard decision follows can_input message by message."""
    stream = rfb.ClientStream(1024)
    text = struct.pack(">BxxxI", 6, 100) + b"p" * 100
    assert rfb.relay(stream, text[:50], True)[0] == b""
    assert stream.buffered == 50
    key = SAMPLES["KeyEvent"][0]
    assert rfb.relay(stream, text[50:] + key, False)[0] == b""
    assert stream.buffered == 0


def test_the_policy_covers_every_known_type() -> None:
    assert rfb.WATCH | rfb.INPUT == rfb.KNOWN and not rfb.WATCH & rfb.INPUT
    for kind in range(256):
        assert rfb.forwarded(kind, True) == (kind in rfb.KNOWN)
        assert rfb.forwarded(kind, False) == (kind in rfb.WATCH)


# --- property-based: random streams of valid messages, cut anywhere -----------------------

def _pad(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


MESSAGES = st.one_of(
    _pad(19).map(lambda b: b"\x00" + b),
    st.lists(st.integers(-2**31, 2**31 - 1), max_size=20).map(
        lambda encs: struct.pack(f">BxH{len(encs)}i", 2, len(encs), *encs)),
    _pad(9).map(lambda b: b"\x03" + b),
    _pad(7).map(lambda b: b"\x04" + b),
    _pad(5).map(lambda b: b"\x05" + b),
    st.tuples(st.integers(0, 300).flatmap(_pad), st.booleans()).map(
        lambda t: struct.pack(">Bxxxi", 6, -len(t[0]) if t[1] else len(t[0])) + t[0]),
    _pad(9).map(lambda b: b"\x96" + b),
    st.binary(max_size=64).map(lambda p: struct.pack(">BxxxIB", 248, 0, len(p)) + p),
    _pad(3).map(lambda b: b"\xfa" + b),
    st.integers(0, 4).flatmap(lambda n: _pad(16 * n).map(
        lambda s: struct.pack(">BxHHBx", 251, 800, 600, len(s) // 16) + s)),
    _pad(10).map(lambda b: b"\xff\x00" + b),
    st.sampled_from([struct.pack(">BBH", 255, 1, 0), struct.pack(">BBH", 255, 1, 1)]),
    _pad(6).map(lambda b: struct.pack(">BBH", 255, 1, 2) + b),
)
CAP = 200  # some generated clipboard texts are longer


GUEST_OK = {name: ok for name, (_, ok) in SAMPLES.items()}
GUEST_KINDS = {SAMPLES[name][0][0] for name, ok in GUEST_OK.items() if ok}


def _expected(messages: list[bytes], can_input: bool) -> bytes:
    keep = [m for m in messages
            if (can_input or m[0] in GUEST_KINDS)
            and not (m[0] == 6 and (not can_input or len(m) - 8 > CAP))]
    return b"".join(keep)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, max_size=30), st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_yields_the_same_messages(messages: list[bytes], cuts: list[int]
                                               ) -> None:
    data = b"".join(messages)
    whole = list(rfb.ClientStream(CAP).feed(data))
    stream = rfb.ClientStream(CAP)
    pieces = [m for chunk in split(data, cuts) for m in stream.feed(chunk)]
    assert pieces == whole
    assert stream.buffered == 0
    # Whole messages, in order; each is kept or read past, never cut or merged.
    assert [m.kind for m in whole] == [m[0] for m in messages]
    assert [m.data for m in whole] == [
        m if not (m[0] == 6 and len(m) - 8 > CAP) else m[:8] for m in messages]
    assert [m.discarded for m in whole] == [m[0] == 6 and len(m) - 8 > CAP for m in messages]


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, max_size=30), st.lists(st.integers(0, 10_000), max_size=40),
       st.booleans())
def test_relay_forwards_exactly_the_allowed_messages(messages: list[bytes], cuts: list[int],
                                                     can_input: bool) -> None:
    data = b"".join(messages)
    stream = rfb.ClientStream(CAP)
    out = bytearray()
    for chunk in split(data, cuts):
        out += rfb.relay(stream, chunk, can_input)[0]
        # At most one incomplete message is held; a guest's clipboard text never is.
        assert stream.buffered <= (84 if not can_input else 8 + CAP)
    assert out == _expected(messages, can_input)
