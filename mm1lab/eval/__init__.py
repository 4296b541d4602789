"""Evaluation with MM1's k-shot and chat protocols; `mm1lab.eval.harness.evaluate` is the entry point.

Modules: `suites` (tasks, their metrics, suites), `items` (ShapeWorld / COCO / VQAv2 eval items), `predictor`
(the `Predictor` protocol and `ModelPredictor`), `baselines` (oracle and constant predictors), `metrics`
(benchmark metrics in pure Python), `scoring` (metric per task and its baseline), `harness` (`evaluate`),
`report` (JSON and figure), `cli` (`mm1lab eval`).
"""
