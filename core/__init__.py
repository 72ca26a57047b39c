"""The modules the pipeline's scripts import (the scripts themselves lie in the repository root).

common (JSONL io, errors, flag types, distributed setup), outputs (what a run may replace: kinds,
sidecars, staged swaps, the lock), prompt (the prompt formats), chat (the chat
format: a model folder's own chat template), checkpoint (train_lm's checkpoints and resume checks),
curriculum, classifier (the severity classifier's folder and encoding), lexicon (the Arabic
severity and urgent-advice lexicons; also a command: `python -m core.lexicon --stats FILE`),
metrics, selection, reporting.
"""
