"""Prompting (survey §6.1–6.2): in-context-learning prompts, the choice and order of their demonstrations, and chain
of thought (few-shot, zero-shot in two stages, self-consistency)."""

from llmlab.infer.prompting.cot import (
    GSM8K_COT_EXEMPLARS, GSM8K_COT_STOP, GSM8K_COT_TEMPLATE, SELF_CONSISTENCY_CONFIG, ZERO_SHOT_COT_ANSWER_TRIGGER,
    ZERO_SHOT_COT_TRIGGER, SelfConsistency, ZeroShotCoT, few_shot_cot_prompt, maj_at_k, majority_vote,
    model_generator, self_consistency, zero_shot_cot, zero_shot_cot_answer_prompt, zero_shot_cot_prompt)
from llmlab.infer.prompting.demonstrations import (
    METHODS, ORDERS, DemonstrationPool, bm25_tokens, order_demonstrations, select_demonstrations,
    sentence_embeddings)
from llmlab.infer.prompting.templates import PromptTemplate, build_prompt, render

__all__ = ["GSM8K_COT_EXEMPLARS", "GSM8K_COT_STOP", "GSM8K_COT_TEMPLATE", "METHODS", "ORDERS",
           "SELF_CONSISTENCY_CONFIG", "ZERO_SHOT_COT_ANSWER_TRIGGER", "ZERO_SHOT_COT_TRIGGER", "DemonstrationPool",
           "PromptTemplate", "SelfConsistency", "ZeroShotCoT", "bm25_tokens", "build_prompt", "few_shot_cot_prompt",
           "maj_at_k", "majority_vote", "model_generator", "order_demonstrations", "render", "select_demonstrations",
           "self_consistency", "sentence_embeddings", "zero_shot_cot", "zero_shot_cot_answer_prompt",
           "zero_shot_cot_prompt"]
