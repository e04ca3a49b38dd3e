"""The model zoo: a registry of named variants (torch is imported only when a model is built).

from fashiondist.models import create_model, list_models, model_recipe
model = create_model("convnet", num_classes=10)
logits = model(uint8_images)  # [N, 1, 28, 28] pixels 0..255 -> [N, 10]
loss, logits = model(uint8_images, targets=labels, label_smoothing=0.1)
"""

from fashiondist.models.registry import (
    DEFAULT_MODEL,
    create_model,
    list_models,
    model_description,
    model_recipe,
)

__all__ = ["DEFAULT_MODEL", "create_model", "list_models", "model_description", "model_recipe"]
