"""A small Python port of llama.cpp's tokenizers, used only to cross-check the golden tokenizations.

Not a golden maker itself: tools/make_tokenizer_goldens.py imports it to confirm that the ids
transformers produces are the ids llama.cpp's algorithms would produce from the same GGUF vocabulary
(see tests/data/README.md). It follows llama.cpp's src/llama-vocab.cpp (as vendored in
llama-cpp-python 0.3.x):

* special-token partition (tokenizer_st_partition): every CONTROL / USER_DEFINED / UNKNOWN token,
  longest text first, is cut out of the raw text before the model tokenizer runs (parse_special);
* SPM (tokenizer.ggml.model "llama"): spaces escaped to U+2581, UTF-8 characters merged by a
  priority queue on the merged token's score (ties: leftmost), then resegmented; pieces that are
  not tokens fall back to <0xXX> byte tokens;
* BPE (tokenizer.ggml.model "gpt2"): the pre-tokenizer regexes of the `pre` type applied one after
  the other (each splits the pieces of the one before), GPT-2 byte-to-unicode, then merges by rank
  (ties: leftmost); `llama-bpe` sets ignore_merges (a pre-token that is a whole vocabulary entry is
  emitted as is).

Unicode categories come from the Python `regex` module, whose tables may differ from llama.cpp's
for very new code points.
"""

from __future__ import annotations

import heapq

import regex

import gguf

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3_RE = (r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
             r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

PRE_REGEXES = {
    "smollm": [r"\p{N}", GPT2_RE + r"|\s+"],
    "gpt2": [GPT2_RE + r"|\s+"],
    "default": [GPT2_RE + r"|\s+"],
    "llama-bpe": [LLAMA3_RE],
}
IGNORE_MERGES = {"llama-bpe"}

CONTROL, USER_DEFINED, UNKNOWN = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED), int(gguf.TokenType.UNKNOWN)


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class Vocab:
    def __init__(self, path: str):
        r = gguf.GGUFReader(path)
        f = r.fields

        def get(key, default=None):
            return f[key].contents() if key in f else default

        self.model = get("tokenizer.ggml.model")
        self.pre = get("tokenizer.ggml.pre", "default")
        self.tokens: list[str] = get("tokenizer.ggml.tokens")
        self.types: list[int] = get("tokenizer.ggml.token_type")
        self.scores = get("tokenizer.ggml.scores")
        merges = get("tokenizer.ggml.merges") or []
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
        self.bos = get("tokenizer.ggml.bos_token_id")
        self.add_bos = bool(get("tokenizer.ggml.add_bos_token", self.model == "llama"))
        self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix", self.model == "llama"))
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            self.token_to_id[t] = i  # llama.cpp: a later duplicate wins
        specials = [i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        self.specials = sorted(specials, key=lambda i: -len(self.tokens[i].encode("utf-8")))
        self.b2u = bytes_to_unicode()

    # -- special-token partition ------------------------------------------------------------
    def partition(self, text: str, parse_special: bool = True) -> list:
        frags: list = [text]  # str = raw text, int = token id
        for tid in self.specials:
            if not parse_special and self.types[tid] in (CONTROL, UNKNOWN):
                continue
            tt = self.tokens[tid]
            if not tt:
                continue
            out = []
            for fr in frags:
                if not isinstance(fr, str) or tt not in fr:
                    out.append(fr)
                    continue
                parts = fr.split(tt)
                for k, p in enumerate(parts):
                    if p:
                        out.append(p)
                    if k < len(parts) - 1:
                        out.append(tid)
            frags = out
        return frags

    # -- SPM ---------------------------------------------------------------------------------
    def _spm(self, text: str, out: list[int]) -> None:
        syms = [[c, i - 1, i + 1] for i, c in enumerate(text)]  # text, prev, next
        if not syms:
            return
        syms[-1][2] = -1
        heap: list = []

        def add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            t = syms[left][0] + syms[right][0]
            tid = self.token_to_id.get(t)
            if tid is None:
                return
            heapq.heappush(heap, (-self.scores[tid], left, right, len(t)))

        for i in range(1, len(syms)):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls[0] or not rs[0] or len(ls[0]) + len(rs[0]) != size:
                continue
            ls[0] += rs[0]
            rs[0] = ""
            ls[2] = rs[2]
            if rs[2] >= 0:
                syms[rs[2]][1] = left
            add(ls[1], left)
            add(left, ls[2])

        # llama.cpp's resegment(): every merge made a vocabulary token, so a final symbol is either a
        # token or a single character that is not one; the latter becomes <0xXX> byte tokens.
        def reseg(t: str) -> None:
            tid = self.token_to_id.get(t)
            if tid is not None:
                out.append(tid)
                return
            for b in t.encode("utf-8"):
                out.append(self.token_to_id[f"<0x{b:02X}>"])

        i = 0
        while i != -1:
            if syms[i][0]:
                reseg(syms[i][0])
            i = syms[i][2]

    # -- BPE ---------------------------------------------------------------------------------
    def _pre(self, text: str) -> list[str]:
        pieces = [text]
        for pat in PRE_REGEXES[self.pre]:
            out = []
            for p in pieces:
                pos = 0
                for m in regex.finditer(pat, p):
                    if m.start() > pos:
                        out.append(p[pos:m.start()])
                    if m.group():
                        out.append(m.group())
                    pos = m.end()
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return pieces

    def _bpe(self, text: str, out: list[int]) -> None:
        for word in self._pre(text):
            w = "".join(self.b2u[b] for b in word.encode("utf-8"))
            if self.pre in IGNORE_MERGES and w in self.token_to_id:
                out.append(self.token_to_id[w])
                continue
            syms = [[c, i - 1, i + 1] for i, c in enumerate(w)]
            syms[-1][2] = -1
            heap: list = []

            def add(left: int, right: int) -> None:
                if left == -1 or right == -1:
                    return
                rank = self.ranks.get((syms[left][0], syms[right][0]))
                if rank is None:
                    return
                heapq.heappush(heap, (rank, left, right, syms[left][0] + syms[right][0]))

            for i in range(1, len(syms)):
                add(i - 1, i)
            while heap:
                _, left, right, t = heapq.heappop(heap)
                ls, rs = syms[left], syms[right]
                if not ls[0] or not rs[0] or ls[0] + rs[0] != t:
                    continue
                ls[0] = t
                rs[0] = ""
                ls[2] = rs[2]
                if rs[2] >= 0:
                    syms[rs[2]][1] = left
                add(ls[1], left)
                add(left, ls[2])
            i = 0
            while i != -1:
                s = syms[i][0]
                if s:
                    tid = self.token_to_id.get(s)
                    if tid is not None:
                        out.append(tid)
                    else:
                        for ch in s:
                            if ch in self.token_to_id:
                                out.append(self.token_to_id[ch])
                i = syms[i][2]

    def encode(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos)
        prev_special = True
        for fr in self.partition(text, parse_special):
            if isinstance(fr, int):
                out.append(fr)
                prev_special = True
                continue
            if self.model == "llama":
                t = (" " if self.add_space_prefix and prev_special else "") + fr
                self._spm(t.replace(" ", "\u2581"), out)
            elif self.model == "gpt2":
                self._bpe(fr, out)
            else:
                raise NotImplementedError(self.model)
            prev_special = False
        return out
