"""The sample pipeline: from a dataset and two models to the paired inputs that get attributed.

``data`` (GSM8K, MATH, College Math, synthetic), ``synthetic`` (the generated arithmetic task),
``prompts`` (chat templates), ``generate`` (greedy answers, cached), ``grading`` (answer
equivalence), ``selection`` (both-correct, length filter, α-truncation, sampling), ``paired``
(all of it for one pair).
May import: the shared top-level modules (``records``, ``cache``, ``models``) only.
"""
