"""Chain-of-thought prompting (survey §6.2): few-shot CoT with Wei et al. (2022)'s eight GSM8K exemplars, Kojima et
al. (2022)'s zero-shot CoT in two stages, and Wang et al. (2023)'s self-consistency (sample k reasoning paths, vote
over their extracted answers: maj@k).

    prompt = few_shot_cot_prompt("Janet has 3 apples ...")  # "Q: … A: … The answer is 6.\\n\\n…Q: …\\nA:"
    votes = self_consistency(model, [prompt], k=8, extract={"flexible": my_extractor})

Answer extraction belongs to llmlab.evaluate.answers (lm-eval's strict and flexible rules); the evaluator passes
those functions in, since infer must not import evaluate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.prompting.templates import PromptTemplate, build_prompt

# Wei et al. 2022, "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models", appendix Table 20, as
# lm-evaluation-harness ships them (lm_eval/tasks/gsm8k/gsm8k-cot.yaml, version 3.0, fewshot_config.samples).
GSM8K_COT_EXEMPLARS = (
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
                 "done, there will be 21 trees. How many trees did the grove workers plant today?",
     "target": "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
               "have been 21 - 15 = 6. The answer is 6."},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "target": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in "
                 "total?",
     "target": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating "
               "35, they had 74 - 35 = 39. The answer is 39."},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops "
                 "did Jason give to Denny?",
     "target": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = "
               "8. The answer is 8."},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he "
                 "have now?",
     "target": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 "
               "= 9. The answer is 9."},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, from "
                 "monday to thursday. How many computers are now in the server room?",
     "target": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
               "computers were added. 9 + 20 is 29. The answer is 29."},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many "
                 "golf balls did he have at the end of wednesday?",
     "target": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 "
               "more, he had 35 - 2 = 33 golf balls. The answer is 33."},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "target": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
               "dollars left. 23 - 15 is 8. The answer is 8."},
)
# gsm8k-cot.yaml's doc_to_text and doc_to_target: a GSM8K record's target is its final answer, an exemplar's its chain.
GSM8K_COT_TEMPLATE = PromptTemplate(text="Q: {{question}}\nA:",
                                    target="{{answer.split('####')[-1].strip() if answer is defined else target}}")
GSM8K_COT_STOP = ("Q:", "</s>", "<|im_end|>")  # gsm8k-cot.yaml's generation_kwargs.until

# Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners", Table 1 (template 1) and the arithmetic answer
# trigger of its two-stage prompting.
ZERO_SHOT_COT_TRIGGER = "Let's think step by step."
ZERO_SHOT_COT_ANSWER_TRIGGER = "Therefore, the answer (arabic numerals) is"

# Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning", §3: GPT-3 was sampled at T = 0.7.
SELF_CONSISTENCY_CONFIG = GenerationConfig(max_new_tokens=256, do_sample=True, temperature=0.7, seed=0,
                                           stop=GSM8K_COT_STOP)

Generator = Callable[[list[str], int, GenerationConfig], list[list[str]]]  # (prompts, n, config) -> n texts a prompt
Extractor = Callable[[str], Hashable | None]


def few_shot_cot_prompt(question: str, exemplars: Sequence[Mapping[str, str]] = GSM8K_COT_EXEMPLARS,
                        instruction: str | None = None, template: PromptTemplate = GSM8K_COT_TEMPLATE) -> str:
    """The few-shot chain-of-thought prompt: "Q: {question}\\nA: {chain} The answer is N." per exemplar, each followed
    by a blank line, then "Q: {question}\\nA:" (lm-eval's gsm8k_cot, 8-shot)."""
    return build_prompt(instruction, exemplars, {"question": question}, template)


def zero_shot_cot_prompt(question: str, trigger: str = ZERO_SHOT_COT_TRIGGER) -> str:
    """Kojima et al.'s stage 1, reasoning extraction: "Q: {question}\\nA: Let's think step by step."."""
    return f"Q: {question}\nA: {trigger}"


def zero_shot_cot_answer_prompt(reasoning_prompt: str, reasoning: str,
                                answer_trigger: str = ZERO_SHOT_COT_ANSWER_TRIGGER) -> str:
    """Kojima et al.'s stage 2, answer extraction: the stage-1 prompt, the reasoning generated after it as it came, a
    space and "Therefore, the answer (arabic numerals) is"."""
    return f"{reasoning_prompt}{reasoning} {answer_trigger}"


def model_generator(model, *, tokenizer=None) -> Generator:
    """A Generator over llmlab's generate: n samples per prompt with the config's options, grouped by prompt."""
    from llmlab.infer.generate import generate

    def run(prompts: list[str], n: int, config: GenerationConfig) -> list[list[str]]:
        result = generate(model, list(prompts), config.replace(n=n), tokenizer=tokenizer)
        if result.text is None:
            raise ConfigError("Chain-of-thought prompting needs a model with a tokenizer to decode its outputs.")
        return [result.text[i * n:(i + 1) * n] for i in range(len(prompts))]

    return run


def _generator(model_or_generator) -> Generator:
    import torch

    if isinstance(model_or_generator, torch.nn.Module):
        return model_generator(model_or_generator)
    if not callable(model_or_generator):
        raise ConfigError("Pass a model or a generate function (prompts, n, config) -> texts per prompt.")
    return model_or_generator


def _texts(generator: Generator, prompts: list[str], n: int, config: GenerationConfig) -> list[list[str]]:
    outputs = generator(prompts, n, config)
    if len(outputs) != len(prompts) or any(len(texts) != n for texts in outputs):
        raise ConfigError(f"The generate function returned {[len(texts) for texts in outputs]} texts for "
                          f"{len(prompts)} prompts, not {n} for each.")
    return outputs


@dataclass
class ZeroShotCoT:
    """One question's two stages: the prompts and the generated reasoning and answer."""

    reasoning_prompt: str
    reasoning: str
    answer_prompt: str
    answer: str


def zero_shot_cot(model_or_generator, questions: Sequence[str], config: GenerationConfig | None = None, *,
                  answer_config: GenerationConfig | None = None) -> list[ZeroShotCoT]:
    """Kojima et al.'s zero-shot CoT for each question: generate the reasoning after "Let's think step by step.", then
    the answer after "Therefore, the answer (arabic numerals) is" (greedy by default, as the paper)."""
    generator = _generator(model_or_generator)
    config = config or GenerationConfig(max_new_tokens=128)
    answer_config = answer_config or GenerationConfig(max_new_tokens=32)
    first = [zero_shot_cot_prompt(question) for question in questions]
    reasoning = [texts[0] for texts in _texts(generator, first, 1, config)]
    second = [zero_shot_cot_answer_prompt(p, r) for p, r in zip(first, reasoning)]
    answers = [texts[0] for texts in _texts(generator, second, 1, answer_config)]
    return [ZeroShotCoT(*values) for values in zip(first, reasoning, second, answers)]


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent answer, None ignored (None when every answer is); a tie goes to the tied answer that occurs
    first in the list."""
    counts = Counter(answer for answer in answers if answer is not None)
    return max(counts, key=counts.__getitem__) if counts else None  # max keeps the first of equal counts


def maj_at_k(answers: Sequence[Hashable | None], k: int) -> Hashable | None:
    """maj@k: the majority vote over the first k samples' answers (as lm-eval's take_first_k, then majority_vote)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(answers):
        raise ConfigError(f"maj@k needs 1 <= k <= {len(answers)} (the samples drawn), not {k!r}.")
    return majority_vote(answers[:k])


@dataclass
class SelfConsistency:
    """One prompt's self-consistency: the k sampled texts, and per extraction rule each sample's answer and the
    majority vote."""

    samples: list[str]
    answers: dict[str, list[Hashable | None]]
    votes: dict[str, Hashable | None]

    def maj_at(self, k: int) -> dict[str, Hashable | None]:
        """maj@k for every rule, over the first k samples."""
        return {rule: maj_at_k(answers, k) for rule, answers in self.answers.items()}


def self_consistency(model_or_generator, prompts: Sequence[str], k: int,
                     extract: Extractor | Mapping[str, Extractor], config: GenerationConfig = SELF_CONSISTENCY_CONFIG,
                     *, invalid: Hashable | None = None) -> list[SelfConsistency]:
    """Wang et al.'s self-consistency for each prompt: k sampled reasoning paths, an answer extracted from each by
    every rule in extract (one function is the rule "answer"), and the majority vote per rule; an extracted None or
    `invalid` (e.g. lm-eval's "[invalid]") takes no part in the vote."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"self-consistency needs k >= 1 samples, not {k!r}.")
    rules = dict(extract) if isinstance(extract, Mapping) else {"answer": extract}
    results = []
    for samples in _texts(_generator(model_or_generator), list(prompts), k, config):
        answers = {rule: [None if (answer := function(text)) == invalid else answer for text in samples]
                   for rule, function in rules.items()}
        results.append(SelfConsistency(samples, answers, {rule: majority_vote(a) for rule, a in answers.items()}))
    return results
