"""``scilm evaluate`` for protein models: the task's metrics, per-record predictions and a PNG.

:func:`scilm.evaluation.protein.evaluate_proteins` runs it; which metrics, predictions columns and
plot a model gets is chosen by its problem type from :data:`scilm.evaluation.registry.EVALUATIONS`
(a new kind of model is one class and one registry line). Text+Chem seq2seq models are evaluated by
:func:`scilm.inference.generate.evaluate_command`.
"""
