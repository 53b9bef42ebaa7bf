#!/usr/bin/env python3
"""Build the umT5 text-encoder fixtures from transformers' UMT5EncoderModel and a freshly trained
Unigram tokenizer (implementations nobody on stillflow wrote).

Usage:  STILLFLOW_VENV=/work/main/.venv python scripts/make_umt5_fixture.py [--no-install]
                                                   [--wan-repo PATH/TO/Wan2.1]
        (or run it with the venv's python directly; PYTHON=/path/to/python overrides both)

Without --no-install it pip-installs the pins below into the venv whose python runs it (ftfy is
the one package the shared venv lacks; with --no-install put it on PYTHONPATH yourself).
With --wan-repo (a checkout of github.com/Wan-Video/Wan2.1) it also
  * cleans the prompts with Wan's own wan/modules/tokenizers.py functions (else with the same
    steps written here: ftfy.fix_text, html.unescape twice, strip, \\s+ -> ' ', strip), and
  * loads the Wan-named weights into Wan's own T5Encoder (load_state_dict strict=True, so every
    key name and shape is checked) and compares its output with transformers', and
  * records Wan's bf16 output (io.safetensors `out_bf16_wan`), the reference of the bf16 test.
The committed fixture was made with --wan-repo (Wan2.1 commit 9737cba).

Writes tests/fixtures/umt5/:
  text_encoder/            UMT5EncoderModel.save_pretrained (config.json + sharded safetensors +
                           model.safetensors.index.json), i.e. diffusers' text_encoder/ folder
  tokenizer/tokenizer.json the trained tokenizer in umT5's tokenizer.json layout
  wan_names.safetensors    the same weights under Wan's t5.py names
  io.safetensors           ids/mask [2,512] of two prompts, the encoder output (zeroed past each
                           length, as Wan/Self-Forcing feed it) and relative-position buckets
  cases.json               tokenizer cases (raw text, cleaned text, ids, mask) and metadata
"""
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

PINS = ["transformers==5.25.0", "tokenizers==0.23.3", "sentencepiece==0.2.3", "safetensors==0.8.0",
        "ftfy==6.3.1", "regex==2026.11.19"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "umt5")

# Tiny UMT5 with umT5-XXL's bucket settings (32 buckets, max_distance 128); d_kv * heads (24) !=
# d_model (32) so the inner attention width is exercised. The first io prompt is > 128 tokens, so
# distances beyond max_distance occur between real tokens.
MODEL = dict(d_model=32, d_kv=6, num_heads=4, num_layers=3, d_ff=48, relative_attention_num_buckets=32,
             relative_attention_max_distance=128, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu")
TEXT_LEN = 512
EXTRA_IDS = 3

# Prompts whose token ids the Rust tokenizer must reproduce (text_len 16 unless given).
CASES = [
    ("A cat walks on the grass, realistic style.", 16),
    ("  Extra   spaces\tand\ttabs\n\nnew lines  ", 16),
    ("\u201cCurly quotes\u201d and \u2018single\u2019 \u2014 em dash\u2026", 16),
    ("caf\u00e9 na\u00efve r\u00e9sum\u00e9 \ufb01ne \uff21\uff22\uff23\uff11\uff12\uff13", 16),
    ("&amp;lt;b&amp;gt; bold &quot;html&quot; &#39;x&#39; &#x4e2d; &eacute;t&eacute;", 16),
    ("Mixed <b>tags</b> &amp; entities &amp;amp;", 16),
    ("&ampx &notit; &amp &copy 2024", 16),
    ("\u4e00\u53ea\u732b\u5728\u8349\u5730\u4e0a\u5954\u8dd1\uff0c\u9633\u5149\u660e\u5a9a\u3002", 16),
    ("", 16),
    ("   \n\t  ", 16),
    ("word " * 40, 16),
    ("emoji \U0001f431\U0001f3ac and unknown \u2603 symbols", 16),
    ("line\u2028sep\u2029para\x85next\x0bvt\x7fdel\ufeffbom\u00a0nbsp\u3000ideo", 16),
    ("\x1b[31mred\x1b[0m text", 16),
    ("\uff76\uff9e\uff97\uff7d \ufb05 \u0149 \u01c4 A\u030a \uff21\u3000\uff22", 16),
    ("&#59; &#128; &#1;x &#0; &#x110000; &#X41; &#65 &lt &gt;", 16),
    ("A cat walks on the grass, realistic style.", TEXT_LEN),
]
# Wan2.1's default negative prompt (wan/configs/shared_config.py).
NEG = ("\u8272\u8c03\u8273\u4e3d\uff0c\u8fc7\u66dd\uff0c\u9759\u6001\uff0c\u7ec6\u8282\u6a21\u7cca\u4e0d\u6e05"
       "\uff0c\u5b57\u5e55\uff0c\u98ce\u683c\uff0c\u4f5c\u54c1\uff0c\u753b\u4f5c\uff0c\u753b\u9762\uff0c"
       "\u9759\u6b62\uff0c\u6574\u4f53\u53d1\u7070\uff0c\u6700\u5dee\u8d28\u91cf\uff0c\u4f4e\u8d28\u91cf")
CASES.append((NEG, 64))

WORDS = ("a cat dog walks runs on the in grass field city street night day sunny rainy realistic "
         "cinematic style camera slowly pans across bright red blue green old young woman man "
         "river mountain sky clouds light shadow close up wide shot video frame motion smooth "
         "detailed high quality beautiful quiet busy ocean waves forest trees snow").split()


def long_prompt(rng, n_words):
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def reexec_in_venv():
    py = os.environ.get("PYTHON")
    if not py and os.environ.get("STILLFLOW_VENV"):
        py = os.path.join(os.environ["STILLFLOW_VENV"], "bin", "python")
    if py and os.path.abspath(py) != os.path.abspath(sys.executable) and not os.environ.get("_UMT5_FIXTURE_CHILD"):
        env = dict(os.environ, _UMT5_FIXTURE_CHILD="1")
        sys.exit(subprocess.call([py, os.path.abspath(__file__)] + sys.argv[1:], env=env))


def ensure_deps():
    if "--no-install" in sys.argv:
        return
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + PINS)


def arg(name):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return None


def load_wan_modules(repo):
    """Imports wan/modules/{tokenizers,t5}.py from a Wan2.1 checkout without running wan/__init__.py
    (which pulls in the whole video stack)."""
    import types
    pkg = types.ModuleType("wan_modules")
    pkg.__path__ = [os.path.join(repo, "wan", "modules")]
    sys.modules["wan_modules"] = pkg
    import torch
    # Released t5.py evaluates torch.cuda.current_device() in a default argument at import time.
    saved = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"
    mods = {}
    try:
        _import_wan(repo, mods)
    finally:
        torch.cuda.current_device = saved
    return mods


def _import_wan(repo, mods):
    import importlib.util
    for name in ["tokenizers", "t5"]:
        spec = importlib.util.spec_from_file_location(f"wan_modules.{name}", os.path.join(repo, "wan", "modules", f"{name}.py"))
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        mods[name] = m


def make_cleaner(wan):
    if wan is not None:
        tk = wan["tokenizers"]
        return lambda t: tk.whitespace_clean(tk.basic_clean(t))
    import ftfy
    import regex

    def clean(t):
        t = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
        return regex.sub(r"\s+", " ", t).strip()
    return clean


def train_tokenizer(clean, tmp):
    """A small sentencepiece Unigram model (umT5's special ids: pad 0, eos 1, unk 2; nmt_nfkc
    normalisation) turned into a tokenizer.json laid out like umT5's."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    rng = random.Random(7)
    lines = [clean(t) for t, _ in CASES] + [long_prompt(rng, rng.randint(5, 30)) for _ in range(400)]
    lines += ["caf\u00e9 na\u00efve r\u00e9sum\u00e9 fine ABC123 \u00e9t\u00e9 \u00bfqu\u00e9? \u00a9 \u00ac \u4e2d"] * 3
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(x for x in lines if x) + "\n")
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, model_type="unigram", vocab_size=420, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    proto = pb.ModelProto()
    with open(prefix + ".model", "rb") as f:
        proto.ParseFromString(f.read())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    # Sentinels after the pieces, highest first, as umT5's tokenizer.json has them.
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(EXTRA_IDS - 1, -1, -1)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True) for t in ["<pad>", "</s>", "<unk>"]]
                           + [AddedToken(f"<extra_id_{i}>", special=True) for i in range(EXTRA_IDS)])
    j = json.loads(tok.to_str())
    # Older tokenizer.json files (umT5's among them) spell the Metaspace option the legacy way;
    # write it so, so that the Rust side has to read that form.
    for p in j["pre_tokenizer"]["pretokenizers"]:
        if p["type"] == "Metaspace":
            p.pop("prepend_scheme")
            p.pop("split")
            p["add_prefix_space"] = True
    return Tokenizer.from_str(json.dumps(j)), j, spm.SentencePieceProcessor(model_file=prefix + ".model")


def encode(tok, texts, text_len):
    """What transformers' fast tokenizer does for Wan's call (padding='max_length', truncation=True,
    max_length=text_len, add_special_tokens=True): the tokenizers pipeline with these settings."""
    tok.enable_truncation(max_length=text_len)
    tok.enable_padding(length=text_len, pad_id=0, pad_token="<pad>")
    encs = tok.encode_batch(texts, add_special_tokens=True)
    return [e.ids for e in encs], [e.attention_mask for e in encs]


def main():
    reexec_in_venv()
    ensure_deps()
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    wan_repo = arg("--wan-repo")
    wan = load_wan_modules(wan_repo) if wan_repo else None
    clean = make_cleaner(wan)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "tokenizer"))
    meta = {"_generated_by": "scripts/make_umt5_fixture.py with transformers " + transformers.__version__
            + ", torch " + torch.__version__, "cleaning": "Wan's own wan/modules/tokenizers.py" if wan
            else "script's copy of Wan's steps (ftfy.fix_text, html.unescape x2, whitespace)"}

    with tempfile.TemporaryDirectory() as tmp:
        tok, tok_json, sp = train_tokenizer(clean, tmp)
    with open(os.path.join(OUT, "tokenizer", "tokenizer.json"), "w") as f:
        json.dump(tok_json, f, ensure_ascii=False)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    cases = []
    for text, n in CASES:
        c = clean(text)
        ids, mask = encode(tok, [c], n)
        cases.append(dict(text=text, clean=c, text_len=n, ids=ids[0], mask=mask[0]))
        # Sanity: sentencepiece itself agrees with the tokenizer.json (before EOS/padding).
        valid = [i for i, m in zip(ids[0], mask[0]) if m]
        if sum(mask[0]) < n and sp.encode(c) + [1] != valid:
            print("note: sentencepiece and tokenizer.json differ on", repr(c))
    # Cross-check: transformers' own tokenizer class over the same file gives the same ids.
    from transformers import PreTrainedTokenizerFast
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer", "tokenizer.json"),
                                     pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    for c in cases:
        r = hf_tok([c["clean"]], padding="max_length", truncation=True, max_length=c["text_len"],
                   add_special_tokens=True)
        assert r.input_ids[0] == c["ids"] and r.attention_mask[0] == c["mask"], c["text"]
    assert cases[10]["ids"][15] == 1 and all(cases[10]["mask"]), "truncation must keep </s>"
    assert cases[8]["ids"][:2] == [1, 0], "empty prompt is just </s>"

    # The model.
    torch.manual_seed(20250607)
    cfg = UMT5Config(vocab_size=vocab_size, dropout_rate=0.0, is_encoder_decoder=False, **MODEL)
    cfg._attn_implementation = "eager"  # plain matmul-softmax, the form Wan's t5.py computes
    model = UMT5EncoderModel(cfg).float().eval()
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
            elif name == "shared.weight":
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    te = os.path.join(OUT, "text_encoder")
    model.save_pretrained(te, safe_serialization=True, max_shard_size="40KB")
    hf_sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    wan_sd = {"token_embedding.weight": hf_sd["shared.weight"], "norm.weight": hf_sd["encoder.final_layer_norm.weight"]}
    table = {"layer.0.layer_norm.weight": "norm1.weight", "layer.0.SelfAttention.q.weight": "attn.q.weight",
             "layer.0.SelfAttention.k.weight": "attn.k.weight", "layer.0.SelfAttention.v.weight": "attn.v.weight",
             "layer.0.SelfAttention.o.weight": "attn.o.weight",
             "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
             "layer.1.layer_norm.weight": "norm2.weight", "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
             "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight"}
    for i in range(cfg.num_layers):
        for h, w in table.items():
            wan_sd[f"blocks.{i}.{w}"] = hf_sd[f"encoder.block.{i}.{h}"]
    save_file(wan_sd, os.path.join(OUT, "wan_names.safetensors"))

    rng = random.Random(11)
    prompts = [long_prompt(rng, 170), "A cat walks on the grass."]
    ids, mask = encode(tok, [clean(p) for p in prompts], TEXT_LEN)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    lens = mask.sum(1).tolist()
    assert lens[0] > 140 and lens[0] < TEXT_LEN, lens
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask).last_hidden_state
    out = raw * mask[..., None].to(raw.dtype)
    meta["io_prompts"] = prompts
    meta["io_lengths"] = lens

    extra = {}
    if wan is None:
        print("warning: without --wan-repo there is no out_bf16_wan; the bf16 test then only "
              "compares with float32")
    else:
        enc = wan["t5"].T5Encoder(vocab=vocab_size, dim=MODEL["d_model"], dim_attn=MODEL["d_kv"] * MODEL["num_heads"],
                                  dim_ffn=MODEL["d_ff"], num_heads=MODEL["num_heads"], num_layers=MODEL["num_layers"],
                                  num_buckets=MODEL["relative_attention_num_buckets"], shared_pos=False, dropout=0.0)
        enc.load_state_dict(wan_sd, strict=True)
        with torch.no_grad():
            wout = enc.eval()(ids, mask) * mask[..., None]
        d = ((wout - out).norm() / out.norm()).item()
        print(f"Wan's T5Encoder vs transformers' UMT5EncoderModel: relative error {d:.3e}")
        assert d < 1e-5, d
        meta["wan_t5_vs_transformers_rel_err"] = d
        # Wan2.1 runs the encoder in bf16 (T5EncoderModel(dtype=torch.bfloat16)): its own mixed
        # precision (f32 norm statistics and softmax) is the reference for stillflow's bf16 path.
        with torch.no_grad():
            out_bf16 = enc.to(torch.bfloat16)(ids, mask) * mask[..., None].to(torch.bfloat16)
        meta["wan_bf16_vs_f32_rel_err"] = ((out_bf16.float() - out).norm() / out.norm()).item()
        extra["out_bf16_wan"] = out_bf16.contiguous()

    # Relative-position buckets from transformers' own function, for XXL's settings and a small one.
    rel = torch.arange(-600, 601)
    buckets = {}
    for nb, md in [(32, 128), (12, 20)]:
        ns = type("C", (), dict(relative_attention_num_buckets=nb, relative_attention_max_distance=md, is_decoder=False))
        buckets[f"buckets_{nb}_{md}"] = UMT5Attention._relative_position_bucket(ns, rel).contiguous()
    save_file(dict(ids=ids.contiguous(), mask=mask.contiguous(), out=out.contiguous(), rel=rel.contiguous(), **buckets, **extra),
              os.path.join(OUT, "io.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(meta=meta, cases=cases), f, ensure_ascii=False, indent=1)
    print("vocab", vocab_size, "io lengths", lens, "|out|", out.abs().mean().item())


if __name__ == "__main__":
    main()
