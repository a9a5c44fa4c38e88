#!/usr/bin/env python3
"""Make troupe's golden data with Hugging Face transformers (reference implementation).

Writes, under --out (normally the repository root):
  tests/data/golden/tokenizer/   trained byte-level BPE tokenizer + cases.json (encode/decode/chat golden)
  tests/data/golden/<model>/     tiny random-weight bf16 checkpoint + tokenizer + golden.json
  tests/data/golden/manifest.json
  models/default/                the embedded default model (random weights, HF default init)

Everything is deterministic: fixed seeds, the corpus read in sorted order, CPU float32 for the figures.
--bf16-figures only adds HF-bf16 figures ("hf_bf16") to the golden.json of the checkpoints already there.
Needs torch, transformers (5.x), tokenizers, safetensors. See docs/golden-data.md.
"""

import argparse
import copy
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

try:
    from transformers import PreTrainedTokenizerFast
except ImportError:  # transformers 5 renamed the class; keep the old name working either way
    from transformers import TokenizersBackend as PreTrainedTokenizerFast

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIALS = [BOS, EOS, IM_START, IM_END]
VOCAB_SIZE = 1024

# Llama-3's pre-tokenizer split pattern (look-ahead and Unicode classes included).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, with BOS first as Llama-3's templates do (the rendered text is then encoded without
# add_special_tokens, so BOS appears exactly once).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MULTILINGUAL_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Die Straße ist schön, nicht wahr? Äpfel, Öl und Übermut.",
    "Le café est déjà prêt ; où est la crème brûlée ? Ça va très bien, merci.",
    "¿Dónde está la biblioteca? El niño comió piña y jalapeños.",
    "Привет, мир! Как дела? Сегодня хорошая погода в Москве.",
    "Γειά σου κόσμε! Η γλώσσα είναι όμορφη.",
    "こんにちは世界。東京は今日晴れです。日本語のテキストを書きます。",
    "你好，世界！今天天气很好。我们一起学习中文吧。",
    "안녕하세요 세계! 오늘 날씨가 좋네요.",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "שלום עולם! מה שלומך?",
    "नमस्ते दुनिया! आप कैसे हैं?",
    "Emoji: 🙂 👍🏽 🚀 ❤️ — and symbols ©®™ ±×÷ €£¥.",
    "Numbers: 0 1 12 123 1234 12345 3.14159 2,718 1e-5 0x1F 2026-11-21.",
    "I'm sure you'll see they've said it's theirs; we'd go, THEY'RE here, You'LL know.",
    "Tabs\tand  double  spaces,\r\nCRLF lines,\n\nblank lines and trailing spaces   ",
]


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def build_corpus(max_bytes=3_000_000):
    """Python's stdlib top-level .py files in sorted order, then our multilingual lines."""
    stdlib = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    texts, total, used = [], 0, 0
    for path in files:
        if total >= max_bytes:
            break
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8", errors="replace")
        texts.append(text)
        total += len(data)
        used += 1
    texts.extend(MULTILINGUAL_LINES * 40)
    joined = "\n".join(texts).encode("utf-8")
    info = {
        "python": sys.version.split()[0],
        "stdlib_dir": stdlib,
        "stdlib_files_used": used,
        "stdlib_bytes": total,
        "multilingual_lines": len(MULTILINGUAL_LINES),
        "multilingual_repeats": 40,
        "sha256": hashlib.sha256(joined).hexdigest(),
    }
    return texts, info


def train_tokenizer():
    texts, corpus_info = build_corpus()
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS}:1 $B:1",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    # Llama-3's tokenizer.json sets ignore_merges (a pre-token that is itself in the vocab is taken
    # whole); set it the same way so the C++ tokenizer is tested on it.
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    for s in SPECIALS:
        assert tok.token_to_id(s) is not None, s
    log("tokenizer: vocab", tok.get_vocab_size(with_added_tokens=True),
        "ids", {s: tok.token_to_id(s) for s in SPECIALS}, "corpus", corpus_info)
    return tok, corpus_info


def save_tokenizer(tok, out_dir, model_max_length, pretty=False):
    """tokenizer.json + tokenizer_config.json (with the chat template inline)."""
    os.makedirs(out_dir, exist_ok=True)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    hf.save_pretrained(out_dir)
    # The backend file is rewritten from the raw tokenizer so it is exactly what was trained (some
    # transformers versions rebuild the post-processor when they see add_bos_token).
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=pretty)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.update({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    # transformers 5 writes the template to chat_template.jinja; keep one source of truth.
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    stm = os.path.join(out_dir, "special_tokens_map.json")
    if os.path.exists(stm):
        os.remove(stm)


TOKENIZER_TEXTS = [
    "",
    "Hello world",
    " Hello world",
    "Hello  world ",
    "hello\nworld\n\n",
    "   leading spaces and trailing   ",
    "Tabs\tand\r\nCRLF\r\n",
    "I'm sure you'll see they've said it's theirs; THEY'RE here, You'LL know, we'D go.",
    "Numbers 1234567 and 3.14159 and 2026-11-21, 007.",
    "Grüße aus München, naïve café — déjà vu.",
    "Привет, мир!",
    "日本語のテキスト、東京。",
    "你好，世界！",
    "مرحبا بالعالم",
    "Emoji 🙂👍🏽🚀 and ❤️.",
    "def f(x):\n    return x ** 2  # square\n",
    "    if (a != b) { return a->c[0]; }",
    "<|im_start|>user\nhi<|im_end|>\n",
    "text with <|end_of_text|> inside and <|begin_of_text|> too",
    "zzzqqqxxx unusualwordsthatneverappear",
    "\u00a0non-breaking\u00a0space and \u200bzero width",
    "a" * 40,
    "!!!???...,,,;;;",
    "x\n\n\n  y",
]

CHAT_CASES = [
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "Grüße 🙂"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "no prompt"}], "add_generation_prompt": False},
]


def tokenizer_cases(tok, tok_dir, checks):
    from transformers import AutoTokenizer
    try:
        hf = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as e:  # noqa: BLE001 - record and go on with the plain class
        checks.append(f"tokenizer: AutoTokenizer failed to load: {e!r}")
        hf = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    cases = []
    for text in TOKENIZER_TEXTS:
        enc = tok.encode(text, add_special_tokens=True)
        enc_ns = tok.encode(text, add_special_tokens=False)
        hf_ids = list(hf(text)["input_ids"])
        hf_ids_ns = list(hf(text, add_special_tokens=False)["input_ids"])
        if hf_ids != enc.ids or hf_ids_ns != enc_ns.ids:
            checks.append(f"tokenizer: AutoTokenizer differs from tokenizers on {text!r}: "
                          f"{hf_ids} vs {enc.ids}; {hf_ids_ns} vs {enc_ns.ids}")
        cases.append({
            "text": text,
            "ids": enc.ids,
            "ids_no_special": enc_ns.ids,
            "tokens_no_special": enc_ns.tokens,
            "offsets_no_special": [list(o) for o in enc_ns.offsets],
            "decoded": tok.decode(enc.ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(enc.ids, skip_special_tokens=True),
        })
    chats = []
    for c in CHAT_CASES:
        try:
            rendered = hf.apply_chat_template(c["messages"], add_generation_prompt=c["add_generation_prompt"],
                                              tokenize=False)
        except Exception as e:  # noqa: BLE001
            checks.append(f"tokenizer: apply_chat_template failed: {e!r}; rendered with jinja2")
            import jinja2
            rendered = jinja2.Environment().from_string(CHAT_TEMPLATE).render(
                messages=c["messages"], add_generation_prompt=c["add_generation_prompt"], bos_token=BOS)
        ids = tok.encode(rendered, add_special_tokens=False).ids
        chats.append(dict(c, rendered=rendered, ids=ids))
    return cases, chats


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def rope(theta, rope_type="default", **extra):
    d = {"rope_type": rope_type, "rope_theta": float(theta)}
    d.update(extra)
    return d


def variants(vocab):
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, hidden_act="silu",
                  max_position_embeddings=256, initializer_range=0.02, use_cache=True)
    return [
        dict(name="llama_gqa", cls="Llama", seed=101, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, rope_parameters=rope(10000.0)),
             note="Llama, GQA 4q/2kv, untied, plain RoPE theta 1e4"),
        dict(name="llama_mqa_tied", cls="Llama", seed=102, std=0.15, shard="200KB", old_style=True,
             cfg=dict(common, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5,
                      tie_word_embeddings=True,
                      rope_parameters=rope(10000.0, "llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=32)),
             note="Llama, MQA (1 kv head), tied embeddings, llama3 RoPE scaling, sharded safetensors, "
                  "config.json in the old key style (rope_theta + rope_scaling)"),
        dict(name="llama_linear", cls="Llama", seed=103, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, rope_parameters=rope(10000.0, "linear", factor=2.0)),
             note="Llama, linear RoPE scaling factor 2, new key style (rope_parameters)"),
        dict(name="llama_dynamic", cls="Llama", seed=104, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      max_position_embeddings=24,
                      tie_word_embeddings=False, rope_parameters=rope(10000.0, "dynamic", factor=2.0)),
             note="Llama, dynamic NTK RoPE factor 2, max_position_embeddings 24 (prompts exceed it)"),
        dict(name="mistral", cls="Mistral", seed=105, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=224, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                      sliding_window=None, tie_word_embeddings=False, rope_parameters=rope(1000000.0)),
             note="Mistral, explicit head_dim 32, no sliding window, theta 1e6"),
        dict(name="qwen2", cls="Qwen2", seed=106, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                      use_sliding_window=False, sliding_window=None, max_window_layers=2,
                      tie_word_embeddings=True, rope_parameters=rope(1000000.0)),
             note="Qwen2, q/k/v biases (random, non-zero), tied embeddings"),
        dict(name="qwen3", cls="Qwen3", seed=107, std=0.15,
             cfg=dict(common, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                      attention_bias=False, use_sliding_window=False, sliding_window=None,
                      max_window_layers=2, tie_word_embeddings=False, rope_parameters=rope(1000000.0)),
             note="Qwen3, per-head q/k RMSNorm, head_dim 64 != hidden/heads (32), GQA 4q/2kv"),
        dict(name="llama_large", cls="Llama", seed=108, std=0.1,
             cfg=dict(common, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, rope_parameters=rope(500000.0)),
             note="the biggest: Llama hidden 256, 8q/2kv heads, 4 layers, intermediate 768"),
    ]


def config_class(cls):
    return getattr(transformers, cls + "Config")


def model_class(cls):
    return getattr(transformers, cls + "ForCausalLM")


def make_config(cls, cfg):
    C = config_class(cls)
    try:
        c = C(**cfg)
    except TypeError:
        # Older transformers: rope_theta + rope_scaling.
        cfg = dict(cfg)
        rp = dict(cfg.pop("rope_parameters"))
        theta = rp.pop("rope_theta")
        cfg["rope_theta"] = theta
        if rp.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = rp
        c = C(**cfg)
    return c


@torch.no_grad()
def init_random(model, seed, std):
    """Larger-than-HF std so logits are peaked and greedy top-2 gaps are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
        elif name.endswith(".bias"):
            v = 0.1 * torch.randn(p.shape, generator=g)
        else:
            v = std * torch.randn(p.shape, generator=g)
        p.copy_(v.to(p.dtype))


@torch.no_grad()
def init_hf_default(model, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            v = torch.ones(p.shape)
        elif name.endswith(".bias"):
            v = torch.zeros(p.shape)
        else:
            v = std * torch.randn(p.shape, generator=g)
        p.copy_(v.to(p.dtype))


def save_model(model, out_dir, shard=None):
    model = model.to(torch.bfloat16)
    kw = {}
    if shard:
        kw["max_shard_size"] = shard
    model.save_pretrained(out_dir, **kw)


def load_fp32(cls, d):
    M = model_class(cls)
    try:
        m = M.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        m = M.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    m = m.float().eval()
    return m


def rewrite_old_style(d):
    """config.json: rope_parameters -> top-level rope_theta + rope_scaling (pre-5 key style)."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None)
    if rp is None:
        return cfg  # already old style (older transformers)
    rp = dict(rp)
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


# ----------------------------------------------------------------------------------------------
# Golden figures
# ----------------------------------------------------------------------------------------------

PROMPT_POOLS = [
    (5, "The quick brown fox jumps over the lazy dog and keeps running"),
    (20, "def greet(name):\n    \"\"\"Say hello.\"\"\"\n    return f\"Hello, {name}!\"  # greet the user politely "
         "and then return nothing else at all"),
    (40, "Once upon a time, in a small village by the sea, there lived an old fisherman who counted "
         "1234 waves every morning. Grüße aus München! 東京は晴れです。 Привет, мир! He smiled, "
         "mended his nets and sang an old song about the wind and the tide."),
]


def make_prompts(tok):
    prompts = []
    for target, pool in PROMPT_POOLS:
        words = pool.split(" ")
        text = ""
        for i in range(1, len(words) + 1):
            text = " ".join(words[:i])
            if len(tok.encode(text).ids) >= target:
                break
        prompts.append(text)
    return prompts


def teacher_forced(model, ids, lp_dtype=torch.float64):
    """lp_dtype: the dtype log_softmax is taken in (float64 for the fp32 figures, float32 for hf_bf16)."""
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits.to(lp_dtype), dim=-1)
    n = len(ids)
    logprobs = [lp[t - 1, ids[t]].item() for t in range(1, n)]
    top = []
    for t in range(n):
        v, i = torch.topk(lp[t], 5)
        top.append([{"id": int(a), "logprob": float(b)} for a, b in zip(i.tolist(), v.tolist())])
    return logprobs, top, lp


def greedy(model, ids, n_new=16, lp_dtype=torch.float64):
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.max_new_tokens = n_new
    gc.min_new_tokens = n_new
    gc.eos_token_id = None  # never stop early, and no eos masking by MinNewTokens
    gc.pad_token_id = 1
    gc.temperature = None
    gc.top_p = None
    gc.top_k = None
    gc.use_cache = True
    gc.output_logits = True
    gc.return_dict_in_generate = True
    # generate() falls back to the model's own special tokens where the passed config has none.
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    seq = out.sequences[0].tolist()
    new = seq[len(ids):]
    assert len(new) == n_new, (len(new), n_new)
    gaps, lps, argmax_ok = [], [], True
    for step, logits in enumerate(out.logits):
        lp = torch.log_softmax(logits[0].to(lp_dtype), dim=-1)
        v, i = torch.topk(lp, 2)
        gaps.append(float(v[0] - v[1]))
        lps.append(float(lp[new[step]]))
        if int(i[0]) != new[step] and float(v[0] - v[1]) > 0:
            argmax_ok = False
    return new, gaps, lps, argmax_ok


def golden_for(v, d, prompts, tok, checks):
    cls = v["cls"]
    cases = []
    for text in prompts:
        ids = tok.encode(text).ids
        # A fresh model per call: dynamic NTK keeps state in the rotary module across forwards.
        m = load_fp32(cls, d)
        logprobs, top, _ = teacher_forced(m, ids)
        m = load_fp32(cls, d)
        new, gaps, glps, argmax_ok = greedy(m, ids)
        if not argmax_ok:
            checks.append(f"{v['name']}: generate's token differs from argmax of its raw logits")
        # Informative: does a cache-free full forward pick the same greedy tokens?
        m = load_fp32(cls, d)
        _, _, lp_full = teacher_forced(m, ids + new)
        n = len(ids)
        nocache = [int(lp_full[n - 1 + k].argmax()) for k in range(len(new))]
        cases.append({
            "prompt": text,
            "prompt_ids": ids,
            "logprobs": logprobs,
            "top": top,
            "greedy": new,
            "greedy_gaps": gaps,
            "greedy_logprobs": glps,
            "greedy_argmax_of_raw_logits": argmax_ok,
            "greedy_equals_cache_free_argmax": nocache == new,
        })
        log(f"  {v['name']}: prompt {len(ids)} tokens, greedy {new[:6]}..., min gap {min(gaps):.4g}, "
            f"cache-free agrees {nocache == new}")
    m = load_fp32(cls, d)
    rp = getattr(m.config, "rope_parameters", None) or getattr(m.config, "rope_scaling", None)
    return {
        "model": v["name"],
        "note": v["note"],
        "dtype": "float32",
        "weights_dtype": "bfloat16",
        "attn_implementation": "eager",
        "device": "cpu",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "hf_rope_parameters": json.loads(json.dumps(rp, default=str)),
        "max_position_embeddings": m.config.max_position_embeddings,
        "cases": cases,
    }


# ----------------------------------------------------------------------------------------------
# HF-bf16 figures (--bf16-figures): the same figures with transformers run in bfloat16
# ----------------------------------------------------------------------------------------------
#
# The CUDA runner computes in bf16 activations, so its error against the fp32 figures above is mostly
# bf16 rounding (~0.1 on these peaked logits). Like vLLM's model tests, which compare the engine with HF
# run in the engine's dtype, each case also gets "hf_bf16": the figures of HF's own bf16 forward. The
# checkpoint is only read: nothing but golden.json is written.

BF16_KEYS = ["hf_bf16_dtype", "hf_bf16_device", "hf_bf16_device_name", "hf_bf16_torch",
             "hf_bf16_transformers", "hf_bf16_logits", "hf_bf16_checks"]


def load_bf16(cls, d, device, fp32_lm_head=False):
    """The checkpoint in torch.bfloat16 on `device`, eager attention. fp32_lm_head: the lm_head matmul
    takes the bf16 final hidden states and bf16 weights but returns float32 logits (as troupe's CUDA
    runner does) instead of HF's bf16 logits, which are rounded to 2^-4 at magnitudes 8..16."""
    M = model_class(cls)
    try:
        m = M.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager")
    except TypeError:
        m = M.from_pretrained(d, torch_dtype=torch.bfloat16, attn_implementation="eager")
    m = m.to(device).eval()  # .to(device) only: buffers (rotary inv_freq) keep the dtype HF gave them
    if fp32_lm_head:
        m.lm_head.register_forward_hook(
            lambda mod, inp, out: torch.nn.functional.linear(inp[0].float(), mod.weight.float()))
    return m


def bf16_cases(name, cls, d, golden, device, fp32_lm_head, checks):
    """Adds "hf_bf16" to every case of golden (in place), from the case's own prompt_ids."""
    m = load_bf16(cls, d, device, fp32_lm_head)
    not_bf16 = sorted(n for n, p in m.named_parameters() if p.dtype != torch.bfloat16)
    if not_bf16:
        checks.append(f"{name}: parameters not in bf16: {not_bf16}")
    for c in golden["cases"]:
        ids = c["prompt_ids"]
        n_new = len(c["greedy"])
        # A fresh model per call, as for the fp32 figures (dynamic NTK keeps state across forwards).
        # Log-probabilities are log_softmax in float32 of the bf16 logits (exact in float32), as vLLM's
        # HF runner takes them; greedy is generate(do_sample=False), no sampling anywhere.
        m = load_bf16(cls, d, device, fp32_lm_head)
        logprobs, _, _ = teacher_forced(m, ids, lp_dtype=torch.float32)
        m = load_bf16(cls, d, device, fp32_lm_head)
        new, gaps, glps, argmax_ok = greedy(m, ids, n_new=n_new, lp_dtype=torch.float32)
        if not argmax_ok:
            checks.append(f"{name}: bf16 generate's token differs from argmax of its raw logits")
        c["hf_bf16"] = {"logprobs": logprobs, "greedy": new, "greedy_logprobs": glps, "greedy_gaps": gaps}
        fp32_lp = c["logprobs"]
        worst = max(abs(a - b) for a, b in zip(logprobs, fp32_lp))
        same = next((k for k in range(n_new) if new[k] != c["greedy"][k]), n_new)
        log(f"  {name}: prompt {len(ids)} tokens, max |bf16 - fp32 logprob| {worst:.4f}, greedy equal for "
            f"{same}/{n_new} steps, min bf16 gap {min(gaps):.4g}")


def add_bf16_figures(golden_root, names, device, fp32_lm_head):
    """Rewrites <golden_root>/<name>/golden.json with hf_bf16 figures; everything else stays as it was."""
    if device == "cuda":
        # Deterministic cuBLAS, and fp32 accumulation without reduced-precision split-K reductions (troupe's
        # GEMMs accumulate in fp32). CUBLAS_WORKSPACE_CONFIG must be set before the first cuBLAS handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = "cpu"
    torch.use_deterministic_algorithms(True, warn_only=True)  # a warning, not a failed run, if an op has none
    checks = []
    for name in names:
        d = os.path.join(golden_root, name)
        path = os.path.join(d, "golden.json")
        with open(path, encoding="utf-8") as f:
            golden = json.load(f)
        with open(os.path.join(d, "config.json")) as f:
            arch = json.load(f)["architectures"][0]
        assert arch.endswith("ForCausalLM"), arch
        bf16_cases(name, arch[:-len("ForCausalLM")], d, golden, device, fp32_lm_head, checks)
        info = {
            "hf_bf16_dtype": "bfloat16",
            "hf_bf16_device": device,
            "hf_bf16_device_name": device_name,
            "hf_bf16_torch": torch.__version__,
            "hf_bf16_transformers": transformers.__version__,
            "hf_bf16_logits": ("float32 (lm_head of bf16 hidden states and weights, fp32 output)"
                               if fp32_lm_head else "bfloat16 (HF's own lm_head)"),
            "hf_bf16_checks": [c for c in checks if c.startswith(name + ":")],
        }
        # The note goes before "cases" (re-runs replace it); the other keys keep their order and text.
        out = {}
        for k, v in golden.items():
            if k in BF16_KEYS:
                continue
            if k == "cases":
                out.update(info)
            out[k] = v
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return checks


def bf16_main(args):
    """--bf16-figures: hf_bf16 figures for the existing checkpoints under --out; writes only golden.json."""
    golden_root = os.path.join(args.out, "tests", "data", "golden")
    only = set(filter(None, args.only.split(",")))
    names = sorted(n for n in os.listdir(golden_root)
                   if os.path.isfile(os.path.join(golden_root, n, "golden.json")) and (not only or n in only))
    if not names:
        sys.exit(f"no <model>/golden.json under {golden_root}")
    device = args.bf16_device or ("cuda" if torch.cuda.is_available() else "cpu")
    log("transformers", transformers.__version__, "torch", torch.__version__, "bf16 figures on", device,
        "for", names)
    t0 = time.time()
    checks = add_bf16_figures(golden_root, names, device, args.fp32_lm_head)
    log("checks:", checks if checks else "all passed")
    log(f"done in {time.time() - t0:.1f}s")


def dir_size(d):
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="root to write tests/data/golden and models/default under")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--bf16-figures", action="store_true",
                    help="only add HF-bf16 figures (\"hf_bf16\") to the golden.json of the existing checkpoints "
                         "under --out; no checkpoint, tokenizer or other file is written")
    ap.add_argument("--bf16-device", choices=["cuda", "cpu"], default=None,
                    help="where the bf16 figures are computed (default: cuda when available, else cpu)")
    ap.add_argument("--fp32-lm-head", action="store_true",
                    help="bf16 figures with float32 logits out of the lm_head matmul (troupe's choice) "
                         "instead of HF's bf16 logits")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_grad_enabled(False)
    if args.bf16_figures:
        bf16_main(args)
        return
    t0 = time.time()
    checks = []

    golden_root = os.path.join(args.out, "tests", "data", "golden")
    default_dir = os.path.join(args.out, "models", "default")
    for d in (golden_root, default_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    log("transformers", transformers.__version__, "torch", torch.__version__)
    tok, corpus_info = train_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)

    tok_dir = os.path.join(golden_root, "tokenizer")
    save_tokenizer(tok, tok_dir, model_max_length=256, pretty=True)
    cases, chats = tokenizer_cases(tok, tok_dir, checks)
    with open(os.path.join(tok_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab_size": vocab, "special_ids": {s: tok.token_to_id(s) for s in SPECIALS},
                   "corpus": corpus_info, "tokenizers": __import__("tokenizers").__version__,
                   "transformers": transformers.__version__,
                   "encode": cases, "chat": chats}, f, indent=1, ensure_ascii=False)
        f.write("\n")

    prompts = make_prompts(tok)
    log("prompts:", [len(tok.encode(p).ids) for p in prompts])
    only = set(filter(None, args.only.split(",")))
    manifest = {"transformers": transformers.__version__, "torch": torch.__version__,
                "vocab_size": vocab, "models": []}
    for v in variants(vocab):
        if only and v["name"] not in only:
            continue
        name, cls = v["name"], v["cls"]
        d = os.path.join(golden_root, name)
        torch.manual_seed(v["seed"])
        config = make_config(cls, v["cfg"])
        model = model_class(cls)(config).eval()
        init_random(model, v["seed"], v["std"])
        if cls == "Qwen2":
            assert any(n.endswith("q_proj.bias") for n, _ in model.named_parameters()), "qwen2 lacks biases"
        save_model(model, d, v.get("shard"))
        save_tokenizer(tok, d, model_max_length=v["cfg"]["max_position_embeddings"])
        if v.get("shard"):
            if not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
                checks.append(f"{name}: save_pretrained did not shard")
            n_shards = len(glob.glob(os.path.join(d, "model-*.safetensors")))
            log(f"  {name}: {n_shards} shards")
        if v.get("old_style"):
            ref = load_fp32(cls, d)
            x = torch.tensor([tok.encode(prompts[2]).ids])
            before = ref(input_ids=x).logits
            rp_before = copy.deepcopy(getattr(ref.config, "rope_parameters", None))
            rewrite_old_style(d)
            again = load_fp32(cls, d)
            after = again(input_ids=x).logits
            diff = float((before - after).abs().max())
            rp_after = getattr(again.config, "rope_parameters", None)
            log(f"  {name}: old-style config reload max |dlogit| = {diff}; rope {rp_before} -> {rp_after}")
            if diff != 0.0:
                checks.append(f"{name}: old-style config changes logits by {diff}")
        if config.tie_word_embeddings:
            m = load_fp32(cls, d)
            if not torch.equal(m.lm_head.weight, m.model.embed_tokens.weight):
                checks.append(f"{name}: tied lm_head differs from embeddings after load")
        g = golden_for(v, d, prompts, tok, checks)
        with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
            json.dump(g, f, indent=1, ensure_ascii=False)
            f.write("\n")
        manifest["models"].append({"name": name, "class": cls + "ForCausalLM", "note": v["note"],
                                   "init_std": v["std"], "seed": v["seed"], "bytes": dir_size(d)})
        log(f"  {name}: {dir_size(d)} bytes, {time.time() - t0:.1f}s")

    # models/default: HF default init (std 0.02), bf16.
    if not only or "default" in only:
        torch.manual_seed(1)
        cfg = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, hidden_act="silu",
                   hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=32, max_position_embeddings=2048, rms_norm_eps=1e-5,
                   initializer_range=0.02, tie_word_embeddings=False, rope_parameters=rope(500000.0))
        model = model_class("Llama")(make_config("Llama", cfg)).eval()
        init_hf_default(model, 1)
        save_model(model, default_dir)
        save_tokenizer(tok, default_dir, model_max_length=2048)
        with open(os.path.join(default_dir, "README.md"), "w") as f:
            f.write(
                "# Default model\n\n"
                "The model `troupe serve` and `troupe generate` use when no model is given.\n\n"
                "Its weights are RANDOM (normal, std 0.02, Hugging Face's default init; norms 1), made by\n"
                "`scripts/make_golden.py` (see docs/golden-data.md): its output is gibberish. It exists so that\n"
                "the server runs out of the box and end-to-end tests have a real checkpoint to load. A\n"
                "trained model will replace it.\n\n"
                "Shape: LlamaForCausalLM, hidden 256, 4 layers, 8 heads / 4 kv heads (head_dim 32),\n"
                "intermediate 704, vocab %d (the byte-level BPE tokenizer trained by the same script, with a\n"
                "ChatML chat template), max_position_embeddings 2048, rope_theta 500000, bf16 safetensors.\n"
                % vocab)
        manifest["default_model_bytes"] = dir_size(default_dir)
        log(f"default: {dir_size(default_dir)} bytes")

    manifest["checks"] = checks
    manifest["golden_bytes"] = dir_size(golden_root)
    with open(os.path.join(golden_root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    log("checks:", checks if checks else "all passed")
    log(f"golden total {manifest['golden_bytes']} bytes; done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
