"""Names the models, the service's request schemas and its settings share, importable without torch.

BentoML's supervisor process imports service.app to read the service's configuration; what that
import pulls in (the schemas, the settings) must not load torch, or the supervisor holds ~190 MB
for models it never runs.
"""

LABELS = ("negative", "positive")  # the sentiment classifier's classes, in logit order
PRECISIONS = ("float32", "float16", "bfloat16", "int8")  # RNNSERVE_PRECISION's choices
