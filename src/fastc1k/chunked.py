"""The chunked-body decoder's rules as data (RFC 9112 7.1): byte classes and one transition
table, walked byte by byte by both engines (_core_py/parser.py ChunkDecoder and
core/parser.pxi chunk_feed, which copies the table into C arrays at import). A byte the
table has no move for is rejected at once (400); chunk data is copied in bulk outside it.

    chunked-body   = *chunk last-chunk trailer-section CRLF
    chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    chunk-size     = 1*HEXDIG                      (at most 16 digits here)
    chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    chunk-ext-name = token ;  chunk-ext-val = token / quoted-string
    quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
    trailer-section = *( field-line CRLF ) ;  field-line = field-name ":" OWS field-value OWS

Limits, counted per byte before the table is consulted: a chunk-size line longer than
MAX_CHUNK_LINE (CRLF excluded), or more than 16 size digits: 400; the trailer section (final
CRLF included) longer than max_header_bytes: 431; the body so far over max_body: 413, as
soon as a size digit makes it so.
"""
from __future__ import annotations

__all__ = ["BYTE_CLASS", "TABLE", "N_CLASSES", "REJECT", "N_STATES"]

# --- byte classes ----------------------------------------------------------------------
(C_OTHER, C_HEX, C_TCHAR, C_WS, C_SEMI, C_EQ, C_DQUOTE, C_BSLASH, C_COLON, C_VCHAR, C_OBS, C_CR,
 C_LF) = range(13)
N_CLASSES = 13


def _byte_class(b: int) -> int:
    ch = chr(b)
    if ch in "0123456789abcdefABCDEF":
        return C_HEX
    if ch.isascii() and (ch.isalnum() or ch in "!#$%&'*+-.^_`|~"):
        return C_TCHAR
    special = {" ": C_WS, "\t": C_WS, ";": C_SEMI, "=": C_EQ, '"': C_DQUOTE, "\\": C_BSLASH,
               ":": C_COLON, "\r": C_CR, "\n": C_LF}
    if ch in special:
        return special[ch]
    if 0x21 <= b <= 0x7E:
        return C_VCHAR
    return C_OBS if b >= 0x80 else C_OTHER


BYTE_CLASS = bytes(_byte_class(b) for b in range(256))

TOKEN = (C_HEX, C_TCHAR)
VCHAR = TOKEN + (C_SEMI, C_EQ, C_DQUOTE, C_BSLASH, C_COLON, C_VCHAR)
VALUE = VCHAR + (C_WS, C_OBS)                       # field-value bytes (OWS included)
QDTEXT = tuple(c for c in VALUE if c not in (C_DQUOTE, C_BSLASH))

# --- states (core/consts.pxi CS_*, checked at import) ------------------------------------
(CS_SIZE0, CS_SIZE, CS_SIZE_BWS, CS_EXT_BWS, CS_EXT_NAME, CS_EXT_NAME_BWS, CS_EXT_EQ_BWS, CS_EXT_TOKEN,
 CS_EXT_QUOTED, CS_EXT_QPAIR, CS_EXT_QEND, CS_EXT_VAL_BWS, CS_SIZE_LF,   # the chunk-size line
 CS_DATA, CS_DATA_CR, CS_DATA_LF,                                           # chunk-data CRLF
 CS_T0, CS_TNAME, CS_TVAL, CS_TLF, CS_END_LF,                               # the trailer section
 CS_DONE) = range(22)
N_STATES = 22

# --- actions: what a move does besides changing state ----------------------------------
A_NONE = 0
A_HEX = 1       # a chunk-size digit: size = size * 16 + digit (16 digits at most)
A_SIZE_END = 2  # the chunk-size line's LF: 413 past max_body; to CS_DATA, or the trailer after size 0
A_NEXT = 3      # a chunk's final LF: the next chunk-size line starts (its own length bound)
A_DONE = 4      # the trailer section's final LF: the body is complete

# state -> {classes: (next state, action)}; every byte not listed is rejected (400)
RULES: dict[int, dict[tuple[int, ...], tuple[int, int]]] = {
    CS_SIZE0: {(C_HEX,): (CS_SIZE, A_HEX)},
    CS_SIZE: {(C_HEX,): (CS_SIZE, A_HEX), (C_WS,): (CS_SIZE_BWS, A_NONE), (C_SEMI,): (CS_EXT_BWS, A_NONE),
              (C_CR,): (CS_SIZE_LF, A_NONE)},
    CS_SIZE_BWS: {(C_WS,): (CS_SIZE_BWS, A_NONE), (C_SEMI,): (CS_EXT_BWS, A_NONE)},
    CS_EXT_BWS: {(C_WS,): (CS_EXT_BWS, A_NONE), TOKEN: (CS_EXT_NAME, A_NONE)},
    CS_EXT_NAME: {TOKEN: (CS_EXT_NAME, A_NONE), (C_WS,): (CS_EXT_NAME_BWS, A_NONE),
                  (C_EQ,): (CS_EXT_EQ_BWS, A_NONE), (C_SEMI,): (CS_EXT_BWS, A_NONE),
                  (C_CR,): (CS_SIZE_LF, A_NONE)},
    CS_EXT_NAME_BWS: {(C_WS,): (CS_EXT_NAME_BWS, A_NONE), (C_EQ,): (CS_EXT_EQ_BWS, A_NONE),
                      (C_SEMI,): (CS_EXT_BWS, A_NONE)},
    CS_EXT_EQ_BWS: {(C_WS,): (CS_EXT_EQ_BWS, A_NONE), TOKEN: (CS_EXT_TOKEN, A_NONE),
                    (C_DQUOTE,): (CS_EXT_QUOTED, A_NONE)},
    CS_EXT_TOKEN: {TOKEN: (CS_EXT_TOKEN, A_NONE), (C_WS,): (CS_EXT_VAL_BWS, A_NONE),
                   (C_SEMI,): (CS_EXT_BWS, A_NONE), (C_CR,): (CS_SIZE_LF, A_NONE)},
    CS_EXT_QUOTED: {QDTEXT: (CS_EXT_QUOTED, A_NONE), (C_BSLASH,): (CS_EXT_QPAIR, A_NONE),
                    (C_DQUOTE,): (CS_EXT_QEND, A_NONE)},
    CS_EXT_QPAIR: {VALUE: (CS_EXT_QUOTED, A_NONE)},
    CS_EXT_QEND: {(C_WS,): (CS_EXT_VAL_BWS, A_NONE), (C_SEMI,): (CS_EXT_BWS, A_NONE),
                  (C_CR,): (CS_SIZE_LF, A_NONE)},
    # whitespace after a value may only lead to another extension (BWS ";"), not to CRLF
    CS_EXT_VAL_BWS: {(C_WS,): (CS_EXT_VAL_BWS, A_NONE), (C_SEMI,): (CS_EXT_BWS, A_NONE)},
    CS_SIZE_LF: {(C_LF,): (CS_DATA, A_SIZE_END)},
    CS_DATA_CR: {(C_CR,): (CS_DATA_LF, A_NONE)},
    CS_DATA_LF: {(C_LF,): (CS_SIZE0, A_NEXT)},
    CS_T0: {(C_CR,): (CS_END_LF, A_NONE), TOKEN: (CS_TNAME, A_NONE)},  # no obs-fold, no bare LF
    CS_TNAME: {TOKEN: (CS_TNAME, A_NONE), (C_COLON,): (CS_TVAL, A_NONE)},
    CS_TVAL: {VALUE: (CS_TVAL, A_NONE), (C_CR,): (CS_TLF, A_NONE)},
    CS_TLF: {(C_LF,): (CS_T0, A_NONE)},
    CS_END_LF: {(C_LF,): (CS_DONE, A_DONE)},
}

REJECT = 0xFF


def _compile() -> bytes:
    """RULES as one flat table: TABLE[state * N_CLASSES + class] = next | action << 5."""
    t = bytearray([REJECT]) * (N_STATES * N_CLASSES)
    for st, moves in RULES.items():
        for classes, (nxt, act) in moves.items():
            for cls in classes:
                t[st * N_CLASSES + cls] = nxt | act << 5
    return bytes(t)


TABLE = _compile()
assert N_STATES <= 32 and max(BYTE_CLASS) < N_CLASSES
