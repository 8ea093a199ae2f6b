import json, random, sentencepiece as spm
random.seed(0)
words = ("pick up the red block and place it in the blue bowl open drawer close top middle bottom "
         "put cup on plate push button turn on stove move slider left right grasp bottle pour water "
         "towel fold shirt stack cubes 1 2 3 10 25 100 robot arm gripper table kitchen sink").split()
uni = ["café", "naïve", "über", "日本", "ロボット", "größe", "señor", "Ω", "→"]
lines = []
for _ in range(3000):
    n = random.randint(3, 12)
    ws = [random.choice(words) for _ in range(n)]
    if random.random() < 0.1: ws.append(random.choice(uni))
    s = " ".join(ws)
    if random.random() < 0.2: s = s.capitalize() + "."
    if random.random() < 0.05: s = s + "  " + "extra"
    lines.append(s)
open("corpus.txt", "w").write("\n".join(lines))
spm.SentencePieceTrainer.train(
    input="corpus.txt", model_prefix="tiny", model_type="bpe", vocab_size=700,
    byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
    remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
    pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", character_coverage=0.995,
    user_defined_symbols=["\n", "\n\n", "▁▁", "<loc0000>", "<loc0001>", "<start_of_turn>"],
    control_symbols=["<mask>"], max_sentence_length=4096, minloglevel=2)
sp = spm.SentencePieceProcessor(model_file="tiny.model")
from sentencepiece import sentencepiece_model_pb2 as pb
m = pb.ModelProto(); m.ParseFromString(open("tiny.model","rb").read())
print(m.normalizer_spec)
pieces = [(p.piece, p.score, p.type) for p in m.pieces]
vocab = {p: i for i, (p, s, t) in enumerate(pieces)}
vocab_scores = {p: s for p, s, t in pieces}
# transformers generate_merges(vocab, vocab_scores)
merges = []
for merge, score in vocab_scores.items():
    local = []
    for i in range(1, len(merge)):
        l, r = merge[:i], merge[i:]
        if l in vocab and r in vocab:
            local.append((l, r, score))
    local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.extend(local)
merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
merges = [[a, b] for a, b, _ in merges]
added = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": t == 3 or p == "<start_of_turn>"}
         for i, (p, s, t) in enumerate(pieces) if t in (3, 4)]
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
       "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
       "pre_tokenizer": None,
       "post_processor": {"type": "TemplateProcessing",
           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
           "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<bos>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
       "decoder": {"type": "Sequence", "decoders": [
           {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
           {"type": "ByteFallback"}, {"type": "Fuse"}]},
       "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                 "vocab": vocab, "merges": merges}}
json.dump(tok, open("tokenizer.json", "w"), ensure_ascii=False, indent=1)
print(len(vocab), len(merges), [pieces[i] for i in range(0, 12)])

from tokenizers import Tokenizer
hf = Tokenizer.from_file("tokenizer.json")
def openpi(prompt, max_len=48):
    t = prompt.strip().replace("_", " ").replace("\n", " ")
    return (sp.encode(t, add_bos=True) + sp.encode("\n"))[:max_len]
tests = ["pick up the red block", "  Pick_up the\nred   block  ", "", "café naïve 日本 ロボット", "zebra quokka 🤖 ✓",
         "put 1234 cups", "a <loc0000><loc0001> b", "<start_of_turn>user", "tab\there", "under_score_", "x" * 10,
         " ".join(["pick up the red block"] * 12), "<eos> <bos> <pad>", "Ω→Ω", "\t\r", "a\n\nb"]
rng = random.Random(1)
alphabet = list("abcdefghijklmnopqrstuvwxyz ABCDE_\n.,0123456789") + uni + ["é", "ß", "\u00a0", "\u3000", "😀"]
for _ in range(200):
    tests.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
mism = 0
for s in tests:
    a = sp.encode(s); b = hf.encode(s, add_special_tokens=False).ids
    if a != b:
        mism += 1
        if mism < 10: print("MISMATCH", repr(s), a, b, [sp.id_to_piece(i) for i in a], [sp.id_to_piece(i) for i in b])
print("mismatches sp vs hf:", mism, "of", len(tests))
json.dump([{"prompt": s, "ids": openpi(s)} for s in tests], open("expected.json", "w"), ensure_ascii=False, indent=0)
