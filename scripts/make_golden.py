#!/usr/bin/env python3
"""Builds the engine's golden test data under tests/data/.

Two steps, run on different machines:

  python3 scripts/make_golden.py tokenizers tests/data
      Needs only the `tokenizers` package (pip). Trains three small byte-level BPE tokenizers on
      the corpus below, one per pre-tokenizer family the C++ tokenizer implements (Qwen2 split
      regex + NFC, Llama-3 split regex + BOS template + ignore_merges, GPT-2 ByteLevel regex), and
      writes the encodings `tokenizers` itself gives for a set of awkward strings.

  python3 scripts/make_golden.py models tests/data OUT_DIR
      Needs torch and transformers (the GPU machine has them; no GPU is used). Builds a tiny
      random-weight Qwen3ForCausalLM and LlamaForCausalLM, saves them with `save_pretrained`
      (safetensors, bf16; the Llama one sharded), and records, for fixed input ids, transformers'
      float32 logits computed from the bf16 weights and 32 greedy tokens.

  python3 scripts/make_golden.py unicode src/engine/tokenizer_unicode_data.h
      Writes the letter/number/combining-class/decomposition tables the C++ tokenizer's
      pre-tokenizer and NFC normalizer use, from Python's unicodedata.

The outputs are committed; this script documents how they were made.
"""
import json
import os
import sys

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Varied enough that merges form across letters, digits, punctuation, whitespace and a few scripts.
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog doesn't care; it's asleep, and they'll wake it later.
We've seen 12 foxes, 345 dogs and 6789 cats in 2024 -- that's 7,146 animals (approx. 3.14159 per acre).
Attention over a paged key-value cache stores keys and values in FP8, halving the memory per token.
def attention(query, key, value, scale):\n    scores = query @ key.T * scale\n    return softmax(scores) @ value
for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // accumulate in float32
Hello, world! Hello again, world? Yes -- hello: world; "quoted" and 'single' [brackets] {braces} <angles>
    Indented line with    several   spaces\tand\ttabs\r\nand windows line endings\r\n
Le café est très bon, naïve façade, à bientôt. Die Straße ist schön, Grüße aus München.
Привет, мир! Как дела? Всё хорошо, спасибо. Москва, Санкт-Петербург.
你好，世界！今天天气很好。我们在测试分词器。
Γειά σου κόσμε. Αθήνα και Θεσσαλονίκη.
こんにちは、世界。カタカナとひらがな。
Emoji test: 🙂 👍🏽 🚀 -- and math: α + β = γ, ∑ x² ≤ ∞.
I'M SURE YOU'RE RIGHT, WE'LL SEE. I'd say you'd've known. She's here; he's there.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 10000 123456789 3.5e-3 0x1F 2^31 -42 +7
The model reads config.json, model.safetensors and tokenizer.json from the model directory.
Tokens per second, inter-token latency, context length 1k to 128k, batch 1, 8 and 32.
"""


def corpus_lines():
    lines = CORPUS.splitlines()
    # Repeat with small variations so frequent pairs clear min_frequency and merges go deep.
    out = []
    for i in range(40):
        for line in lines:
            out.append(line if i % 2 == 0 else line.lower())
        out.append(" ".join(str(i * 37 + k) for k in range(12)))
    return out


SPECIALS = {
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
    "gpt2": ["<|endoftext|>"],
}

GOLDEN_STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces   ",
    "a  b\t\tc\n\n  d   \n",
    "line1\r\nline2\r\n\r\nline3",
    "Digits: 1 12 123 1234 12345 1234567890 3.14159 -42 0x1F",
    "I'm sure they'LL see; WE'VE DON'T she's it'd",
    "Punctuation!!! ??? ... --- ((nested)) {\"json\": [1, 2]} <tag/>",
    "Le café est très bon, naïve Straße.",
    "Привет, мир! Как дела?",
    "你好，世界！今天天气很好。",
    "Emoji 🙂👍🏽🚀 and math α+β≤∞ x²",
    "tab\tseparated\tvalues\t",
    "\n\n\n",
    " ",
    "",
    "def f(x):\n    return x * 2  # double\n",
    "unseen words: xylophone quizzical zephyr",
    "decomposed: Cafe\u0301 n\u0303 \u1100\u1161\u11a8 \u212b q\u0307\u0323 ſ's",
    "added-token text inside words: x<|endoftext|>y",
]

SPECIAL_STRINGS = {
    "qwen2": ["<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", "a<|endoftext|>b<|endoftext|>"],
    "llama3": ["<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>", "x<|end_of_text|> y"],
    "gpt2": ["one<|endoftext|>two", "<|endoftext|> spaced"],
}


# Random strings for a differential check: mixtures of scripts, digits of several systems,
# every whitespace class, contractions in both cases, combining marks (NFC), control characters
# and special tokens. Code points come from long-established blocks only: `tokenizers`' NFC uses
# an old Unicode version (its unicode-normalization-alignments crate), so marks added since
# Unicode 10 reorder differently there than in the standard this repository follows.
RANDOM_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~",
    " ", "  ", "\t", "\n", "\r\n", "\r", "\x0b\x0c", "\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000",
    "'", "'s'S't'T're'RE've'Ve'm'M'll'LL'd'D", "\u017f", "éèêëçàùñßøå", "ПриветмирЖж", "αβγδΩ", "中文字符测试",
    "ひらがなカタカナ", "\u0301\u0300\u0323\u0307\u0308", "\u1100\u1161\u11a8\uac00", "٠١٢٣٤٥٦٧٨٩", "²³¹½Ⅷ",
    "🙂👍🏽🚀", "\u200b\u200d\ufeff", "\u00ad", "<|endoftext|>", "<|im_start|>", "<|begin_of_text|>", "<|eot_id|>",
    "\x00\x01\x1f\x7f",
]


def random_strings(count, seed):
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 25)):
            pool = rng.choice(RANDOM_POOLS)
            if rng.random() < 0.5 or len(pool) < 3:
                parts.append(pool if rng.random() < 0.3 else "".join(rng.choice(pool) for _ in range(rng.randint(1, 5))))
            else:
                parts.append(pool)
        out.append("".join(parts))
    return out


def train_tokenizer(style):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if style == "qwen2":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif style == "llama3":
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=2, special_tokens=SPECIALS[style],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    if style == "llama3":
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def make_tokenizers(data_dir):
    from tokenizers import Tokenizer

    tok_dir = os.path.join(data_dir, "tokenizers")
    os.makedirs(tok_dir, exist_ok=True)
    golden = {}
    random_texts = random_strings(300, seed=2024)
    random_cases = {"texts": random_texts}
    for style in ("qwen2", "llama3", "gpt2"):
        path = os.path.join(tok_dir, f"{style}.json")
        if os.path.exists(path):
            # Trained once and copied into the model directories: keep it, refresh only the goldens.
            tok = Tokenizer.from_file(path)
            style_done = True
        else:
            tok = train_tokenizer(style)
            tok.save(path)
            style_done = False
        if style == "qwen2" and not style_done:
            # Real Qwen2 files spell merges as "a b" strings; newer `tokenizers` writes [a, b]
            # pairs. Keep one file in each spelling so the C++ reader sees both.
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
            spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(spec, f, ensure_ascii=False, indent=1)
            tok = Tokenizer.from_file(path)
        cases = []
        for text in GOLDEN_STRINGS + SPECIAL_STRINGS[style]:
            ids = tok.encode(text).ids
            cases.append({"text": text, "ids": ids,
                          "decoded": tok.decode(ids, skip_special_tokens=True),
                          "decoded_with_special": tok.decode(ids, skip_special_tokens=False)})
        golden[style] = {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "cases": cases}
        random_cases[style] = [tok.encode(text).ids for text in random_texts]
        print(f"{style}: vocab {tok.get_vocab_size()} -> {path}")
    import tokenizers
    golden["tokenizers_version"] = tokenizers.__version__
    with open(os.path.join(tok_dir, "golden_encodings.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
    with open(os.path.join(tok_dir, "golden_random.json"), "w", encoding="utf-8") as f:
        json.dump(random_cases, f, ensure_ascii=True)


# --- models ---------------------------------------------------------------------------------------

MODEL_VOCAB = 1024  # covers every tokenizer above (900 + specials), padded as real models pad
PROMPT = "The quick brown fox jumps over the lazy dog. Attention over a paged cache stores keys in FP8."
NEW_TOKENS = 32


def randomize_norms(model, torch, gen):
    # Transformers initialises RMSNorm weights to 1, which would leave a norm-weight indexing bug
    # invisible; perturb them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float32))


def build_models(data_dir, out_dir):
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    specs = {
        "tiny-qwen3": ("qwen2", Qwen3Config(
            vocab_size=MODEL_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
            rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.1,
            bos_token_id=None, eos_token_id=None)),
        "tiny-llama": ("llama3", LlamaConfig(
            vocab_size=MODEL_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            bos_token_id=None, eos_token_id=None)),
    }
    summary = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}
    for name, (style, config) in specs.items():
        tok_path = os.path.join(data_dir, "tokenizers", f"{style}.json")
        tok = Tokenizer.from_file(tok_path)
        if style == "qwen2":
            config.bos_token_id = None
            config.eos_token_id = tok.token_to_id("<|im_end|>")
        else:
            config.bos_token_id = tok.token_to_id("<|begin_of_text|>")
            config.eos_token_id = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        randomize_norms(model, torch, gen)
        model.eval()
        model_dir = os.path.join(out_dir, name)
        shard = {"max_shard_size": "500KB"} if name == "tiny-llama" else {}
        model.save_pretrained(model_dir, safe_serialization=True, **shard)
        with open(tok_path, encoding="utf-8") as src, open(os.path.join(model_dir, "tokenizer.json"), "w",
                                                           encoding="utf-8") as dst:
            dst.write(src.read())

        # Logits in float32 from the bf16 weights: the upcast is exact, so the only bf16 rounding
        # left is in the stored weights, the same weights the engine loads.
        model32 = model.float()
        input_ids = tok.encode(PROMPT).ids
        with torch.no_grad():
            logits = model32(torch.tensor([input_ids])).logits[0].float().contiguous()
            seq = list(input_ids)
            margins = []
            for _ in range(NEW_TOKENS):
                last = model32(torch.tensor([seq])).logits[0, -1].float()
                top2 = torch.topk(last, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                seq.append(int(top2.indices[0]))
        from safetensors.torch import save_file
        save_file({"logits": logits}, os.path.join(model_dir, "golden_logits.safetensors"))
        golden = {"input_ids": input_ids, "prompt": PROMPT, "greedy_new_tokens": seq[len(input_ids):],
                  "greedy_top2_margins": margins, "logits_file": "golden_logits.safetensors",
                  "logits_shape": list(logits.shape), "logits_dtype": "float32",
                  "transformers_version": transformers.__version__, "torch_version": torch.__version__}
        with open(os.path.join(model_dir, "golden.json"), "w", encoding="utf-8") as f:
            json.dump(golden, f, indent=1)
        summary[name] = {"files": sorted(os.listdir(model_dir)), "min_margin": min(margins),
                         "logits_absmax": float(logits.abs().max())}
        print(name, json.dumps(summary[name]))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)


# --- Unicode tables for the C++ pre-tokenizer and NFC normalizer ------------------------------------

def make_unicode_tables(out_path):
    """Writes the code-point tables the C++ tokenizer needs.

    `tokenizers` 0.23 matches its split regex with Oniguruma's Unicode 16.0 tables, so the tables
    come from the `unicodedata2==16.0.0` backport when it is installed (pip), else from this
    Python's own unicodedata (3.11: Unicode 14.0; letters added since then would then split apart).
    """
    try:
        import unicodedata2 as ud
        from importlib.metadata import version
        source = f"unicodedata2 {version('unicodedata2')}"
    except ImportError:
        import unicodedata as ud
        source = f"Python {sys.version.split()[0]}'s unicodedata"

    def ranges(code_points, value=None):
        out = []
        for c in code_points:
            v = value(c) if value else None
            if out and out[-1][1] == c - 1 and out[-1][2] == v:
                out[-1][1] = c
            else:
                out.append([c, c, v])
        return out

    def chunked(items, per_line):
        return "\n".join("    " + " ".join(items[i:i + per_line]) for i in range(0, len(items), per_line))

    all_cps = range(0x110000)
    letters = ranges(c for c in all_cps if ud.category(chr(c)).startswith("L"))
    numbers = ranges(c for c in all_cps if ud.category(chr(c)).startswith("N"))
    classes = ranges((c for c in all_cps if ud.combining(chr(c))), lambda c: ud.combining(chr(c)))
    decomps = []
    for c in all_cps:
        d = ud.decomposition(chr(c))
        if not d or d.startswith("<"):
            continue  # none, or a compatibility decomposition (NFKC only)
        parts = [int(x, 16) for x in d.split()]
        assert len(parts) in (1, 2)
        composes = len(parts) == 2 and ud.normalize("NFC", chr(c)) == chr(c)
        decomps.append((c, parts[0], parts[1] if len(parts) == 2 else 0, composes))

    text = f"""// Generated by `python3 scripts/make_golden.py unicode {out_path}` from {source}
// (Unicode {ud.unidata_version}); do not edit. Hangul syllables are not listed: NFC composes and
// decomposes them arithmetically.
#pragma once

#include <cstdint>

namespace fp8kv::engine::unicode_data {{

struct Range {{
  uint32_t first, last;
}};
struct ClassRange {{
  uint32_t first, last;
  uint8_t combining_class;
}};
// A canonical decomposition: one code point (second == 0) or two. `composes`: NFC recomposes the
// pair into code_point (a primary composite that is not excluded from composition).
struct Decomposition {{
  uint32_t code_point, first, second;
  bool composes;
}};

// General category L* (\\p{{L}}).
inline constexpr Range kLetters[] = {{
{chunked([f"{{0x{a:x}, 0x{b:x}}}," for a, b, _ in letters], 6)}
}};

// General category N* (\\p{{N}}).
inline constexpr Range kNumbers[] = {{
{chunked([f"{{0x{a:x}, 0x{b:x}}}," for a, b, _ in numbers], 6)}
}};

// Canonical_Combining_Class, non-zero entries.
inline constexpr ClassRange kCombiningClasses[] = {{
{chunked([f"{{0x{a:x}, 0x{b:x}, {v}}}," for a, b, v in classes], 5)}
}};

// Sorted by code_point.
inline constexpr Decomposition kDecompositions[] = {{
{chunked([f"{{0x{c:x}, 0x{a:x}, 0x{b:x}, {'true' if k else 'false'}}}," for c, a, b, k in decomps], 4)}
}};

}}  // namespace fp8kv::engine::unicode_data
"""
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{out_path}: {len(letters)} letter ranges, {len(numbers)} number ranges, "
          f"{len(classes)} combining-class ranges, {len(decomps)} decompositions")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "tokenizers":
        make_tokenizers(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "unicode":
        make_unicode_tables(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "models":
        build_models(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
